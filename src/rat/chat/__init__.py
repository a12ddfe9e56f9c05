"""Chat mode (`rat serve --chat`): nicks, rooms, commands and history.

- `rat.chat.text`: what happens to a line's text, which names are valid (pure);
- `rat.chat.session`: the rules, `Chat` and `ChatSession` (pure: lines in,
  publishes and replies out; no sockets);
- `rat.chat.server`: `ChatServer`, the server with those rules in front of
  its hub.

Only `rat serve --chat` imports this package.
"""
