# The README's two commands in a container (CPU: the "cpu" backend, its loops built with g++; the kernels built
# and run on the host).
#   docker build -t rnncells .
#   docker run --rm rnncells                                                   # rnncells demo
#   docker run --rm -v "$PWD:/out" rnncells rnncells demo --plot /out/curves.png   # the plot lands in $PWD
#   docker run --rm rnncells pytest                                            # the tests (torch's are skipped)
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir ".[plot,test]"
CMD ["rnncells", "demo"]
