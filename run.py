"""Real-time driving-scene segmentation: python run.py --camera 0 | --video FILE | --images GLOB."""

if __name__ == "__main__":
    try:
        from realtime.cli import entry  # importing OpenCV and the runtimes takes a moment
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    entry()
