"""`python -m zhinao_k8s ...` is the `zhinao-k8s` command (for images and venvs without the script)."""

from zhinao_k8s.cli.app import main

if __name__ == "__main__":
    main()
