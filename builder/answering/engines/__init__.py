"""Where the tokens come from: one small engine per backend (transformers, llama.cpp,
a remote OpenAI-compatible completion server), composed into a Chatbot."""
