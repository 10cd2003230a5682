"""The `mailgate` command and its subcommands, the demo."""
