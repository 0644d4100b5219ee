"""rag-platform: a multi-tenant RAG data platform."""
