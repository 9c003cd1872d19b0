"""The Streamlit dashboard: it reads the store and never imports training code."""
