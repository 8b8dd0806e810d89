"""The `bngap` subcommands, one module each; `cli` puts them on its click group."""
