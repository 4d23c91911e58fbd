"""The app's screens: the chat, and the modal dialogs it opens (approval, help, model picker,
rename and delete)."""
