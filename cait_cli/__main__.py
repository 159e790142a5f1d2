"""`python -m cait_cli ...`, as torchrun's `-m cait_cli` needs: the `cait` command."""
from .interface.cli import main

if __name__ == "__main__":
    main()
