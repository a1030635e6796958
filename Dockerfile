# The README's two commands in a container (CPU; NumPy backend).
#   docker build -t rnncells . && docker run --rm rnncells            # rnncells check
#   docker run --rm rnncells pytest                                    # the tests
FROM python:3.11-slim
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir ".[test]"
CMD ["rnncells", "check"]
