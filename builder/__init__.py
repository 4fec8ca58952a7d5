"""Korean domain chatbot builder."""
