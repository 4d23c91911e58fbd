"""The terminal chat: a Textual app over `assistant/` (agent, tools, sessions). `make_app` in
`tui.app` builds it for the CLI and for the tests; screens live in `tui.screens`, widgets in
`tui.widgets`, each with its styles in a sibling `.tcss` file."""
