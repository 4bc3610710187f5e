"""Real-time driving-scene segmentation: python run.py --camera 0 | --video FILE | --images GLOB."""

from realtime.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
