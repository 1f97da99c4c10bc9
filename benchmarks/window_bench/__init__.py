"""The modules of `benchmarks/radiology_window.py`: one concept each.

- `options`: the case's constants and the command-line options (`Settings`)
- `data`: the synthetic BraTS-like case, the real brain MR and CT inputs, SimpleITK helpers
- `networks`: the MONAI UNet, its ONNX export, packaging it as a model folder, loading it
- `contenders`: A (the runtime end to end), B (MONAI), C (TorchIO), where B and C place their
  windows, the runs with and without skipping background
- `compute`: D (the backend's compute alone), D1 (one batch at a time), torch's compute alone
- `stages`: A stage by stage, through the window engine's public API
- `timing`: turns, clocks, CPU and steal time
- `report`: tables, ratios and label agreement
- `host`: the machine's description, the shared test data folder, a process's own peak memory,
  SIGTERM as an exit; every script of benchmarks/ uses it
- `cli_run`: `runtime predict` as a new process, on the runtime being timed
- `main_case` and `main_report`: part 1, the synthetic case, and what it prints
- `scans`, `brain`, `ct`: parts 2 and 3, on a real brain MR and a real CT series

Only the runtime's public API is imported. Contenders A, B, C and D use what the runtime offered
before its window engine was rewritten too, so the same modules time an older checkout of the
runtime (put on PYTHONPATH) with `--no-stages`.
"""
