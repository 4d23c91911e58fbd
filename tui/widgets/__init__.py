"""The chat's widgets: prompt input, messages, tool calls, session list and status bar. Each
talks upward with dataclass messages nested in the widget class."""
