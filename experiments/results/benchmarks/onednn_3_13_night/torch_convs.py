import sys, time, statistics, torch
torch.set_num_threads(2)
shapes = {'w8': [(128,3,8,32),(128,8,8,32),(128,8,16,16),(128,16,16,16),(128,16,32,8),(128,32,32,8),(128,32,64,4),(128,64,64,4),(128,64,64,2)],
          'd1': [(64,3,64,32),(64,64,64,32),(64,64,128,16),(64,128,128,16),(64,128,256,8),(64,256,256,8),(64,256,512,4),(64,512,512,4),(64,512,512,2)]}[sys.argv[1]]
def med(f, reps=21):
  ts = []
  for _ in range(reps):
    a = time.perf_counter(); f(); ts.append(time.perf_counter() - a)
  return statistics.median(ts) * 1e3
tot = [0, 0, 0]
for n, c, k, h in shapes:
  x = torch.randn(n, c, h, h).to(memory_format=torch.channels_last)
  conv = torch.nn.Conv2d(c, k, 3, padding=1).to(memory_format=torch.channels_last)
  g = torch.randn(n, k, h, h).to(memory_format=torch.channels_last)
  xr = x.clone().requires_grad_(True)
  def fwd():
    with torch.no_grad():
      torch.relu_(conv(x))
  out = conv(xr)
  def bwd_data():
    torch.autograd.grad(out, xr, g, retain_graph=True)
  def bwd_w():
    torch.autograd.grad(out, conv.weight, g, retain_graph=True)
  for f in (fwd, bwd_data, bwd_w):
    for _ in range(3): f()
  t = [med(fwd), med(bwd_data), med(bwd_w)]
  tot = [a + b for a, b in zip(tot, t)]
print(f'total fwd {tot[0]:.2f} bwd_data {tot[1]:.2f} bwd_w {tot[2]:.2f} ms (torch {torch.__version__})')
