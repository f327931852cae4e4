"""Train Sparse MERIT or a baseline: ``python train.py --help`` (see ``merit.training``)."""

from merit.training import main

if __name__ == "__main__":
    main()
