"""The `bngap` subcommands, one module each (`cli` puts them on its group);
`options` declares what several share, `reporting` delivers a check's report."""
