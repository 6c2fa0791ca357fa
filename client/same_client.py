"""Command line client of the ``same`` endpoint (also installed as ``same-client``).

python client/same_client.py --url 127.0.0.1:8001 classify digit.png
"""

from same_defense.client.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
