"""Training steps of the standard configuration (LSTM, T=100, B=64, I=H=512, fp32) for ncu.

bench/gpu_session.sh profiles the steps after the first few (warm-up: compilation, handles).
"""

import cupy

import rnncells as rc

T, B, I, H = 100, 64, 512, 512
params = rc.init_lstm_params(I, H, xp=cupy)
x = cupy.random.standard_normal((T, B, I), dtype=cupy.float32)
dy = cupy.random.standard_normal((T, B, H), dtype=cupy.float32)
for _ in range(5):
    y, _, ctx = rc.lstm_forward(x, params)
    rc.lstm_backward(ctx, dy)
cupy.cuda.Device().synchronize()
