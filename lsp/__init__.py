"""The language server (`server`, `completer`, `config`) and the code index behind its
completions: `languages` maps files to tree-sitter grammars and queries, `extract` turns one file
into its symbols, `index` holds the workspace's symbols, `resolve` follows imports across files,
`context` picks and budgets the definitions a completion prompt needs (`render` writes each
one), and `watch` keeps the index in step with the disk."""
