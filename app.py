"""Sparse MERIT demo: ``python app.py [--model DIR_OR_HUB_ID] [--host H] [--port P]``.

Also the entry point of the Hugging Face Space (``merit.hub publish --space-id``).
"""

from merit.app import main

if __name__ == "__main__":
    main()
