"""How a run executes on its devices: the argv per mode, the vLLM server and its supervisor,
process trees, stop signals, ports, GPU checks and monitoring, the CPU-rehearsal patches."""
