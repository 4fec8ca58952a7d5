"""Getting the bot out: GGUF export, the Hugging Face Hub and the cards."""
