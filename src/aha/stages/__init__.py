"""One module per workflow stage: rule = `python -m aha STAGE` = module. Stages never import
stages; what two share lives in aha.formats, aha.task, aha.launch or aha.report."""
