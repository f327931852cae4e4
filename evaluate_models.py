"""Evaluate trained models on frozen noisy test sets: ``python evaluate_models.py --help``
(see ``merit.evaluation``)."""

from merit.evaluation import main

if __name__ == "__main__":
    main()
