"""``python -m rmtabtool`` runs the command line."""

from rmtabtool.cli import main

if __name__ == "__main__":
    main()
