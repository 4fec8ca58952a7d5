"""The owner's loop: the conversation log, the inbox of unanswered questions, the charts."""
