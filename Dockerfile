# Moodwire image for docker-compose (CPU). For a GPU host, install the `gpu` extra and a CUDA torch.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY moodwire moodwire
COPY stream stream
COPY learner learner
COPY retrieval retrieval
COPY dashboard dashboard
COPY state state
RUN pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install -c constraints.txt ".[postgres]"
ENTRYPOINT ["moodwire"]
