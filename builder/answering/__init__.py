"""Answering a customer: the knowledge (retrieval and the decline gate), the grounding step,
the fact guard, the chatbot and its engines."""
