"""Train, export to ONNX, calibrate and write the Triton repository (same as `make repository`).

python export/build.py --help
"""

from same_defense.export.build import main

if __name__ == "__main__":
    raise SystemExit(main())
