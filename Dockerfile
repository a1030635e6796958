# The README's two commands in a container (CPU; NumPy backend, kernels run on the host).
#   docker build -t rnncells . && docker run --rm rnncells            # rnncells demo
#   docker run --rm rnncells pytest                                    # the tests
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir ".[plot,test]"
CMD ["rnncells", "demo", "--plot", "curves.png"]
