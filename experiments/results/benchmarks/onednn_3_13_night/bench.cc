// conv timing: fwd (bias+relu), bwd data, bwd weights; src/dst nhwc (ANYFMT=1: oneDNN's
// choice), weights any. FRESH=1: a fresh forward output buffer per call.
#include "oneapi/dnnl/dnnl.hpp"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <array>
#include <string>
#include <algorithm>
using namespace dnnl;
using tag = memory::format_tag; using dt = memory::data_type;
double ms_of(auto f, int reps) { std::vector<double> t; for (int r=0;r<reps;++r){ auto a=std::chrono::steady_clock::now(); f(); auto b=std::chrono::steady_clock::now(); t.push_back(std::chrono::duration<double,std::milli>(b-a).count()); } std::sort(t.begin(), t.end()); return t[t.size()/2]; }
int main(int argc, char** argv) {
  engine eng(engine::kind::cpu, 0); stream s(eng);
  // N, C, K, H: 3x3 SAME convs of w1/8 VGG-D at batch 128 (per-device 128 on one device)
  std::vector<std::array<int,4>> shapes = {{128,3,8,32},{128,8,8,32},{128,8,16,16},{128,16,16,16},{128,16,32,8},{128,32,32,8},{128,32,64,4},{128,64,64,4},{128,64,64,2}};
  if (argc > 1 && std::string(argv[1]) == "d1")  // VGG-D at width 1, batch 64
    shapes = {{64,3,64,32},{64,64,64,32},{64,64,128,16},{64,128,128,16},{64,128,256,8},{64,256,256,8},{64,256,512,4},{64,512,512,4},{64,512,512,2}};
  double tot[3]={0,0,0};
  for (auto& sh : shapes) {
    int N=sh[0], C=sh[1], K=sh[2], H=sh[3];
    memory::dims src_d={N,C,H,H}, w_d={K,C,3,3}, b_d={K}, dst_d={N,K,H,H}, st={1,1}, pad={1,1};
    const tag act = getenv("ANYFMT") ? tag::any : tag::nhwc;
    auto src_md=memory::desc(src_d, dt::f32, act), dst_md=memory::desc(dst_d, dt::f32, act);
    auto w_any=memory::desc(w_d, dt::f32, tag::any), b_md=memory::desc(b_d, dt::f32, tag::x);
    post_ops po; po.append_eltwise(algorithm::eltwise_relu, 0.f, 0.f); primitive_attr attr; attr.set_post_ops(po);
    auto fpd = convolution_forward::primitive_desc(eng, prop_kind::forward_training, algorithm::convolution_direct, src_md, w_any, b_md, dst_md, st, pad, pad, attr);
    auto bdpd = convolution_backward_data::primitive_desc(eng, algorithm::convolution_direct, src_md, w_any, dst_md, st, pad, pad, fpd);
    auto bwpd = convolution_backward_weights::primitive_desc(eng, algorithm::convolution_direct, src_md, w_any, b_md, dst_md, st, pad, pad, fpd);
    memory src(fpd.src_desc(), eng), dst(fpd.dst_desc(), eng), dsrc(bdpd.diff_src_desc(), eng),
        ddst(bwpd.diff_dst_desc(), eng), b(b_md, eng), db(b_md, eng);
    memory w(fpd.weights_desc(), eng), wbd(bdpd.weights_desc(), eng), dw(bwpd.diff_weights_desc(), eng);
    for (auto* m : {&src,&dst,&dsrc,&ddst,&b,&db,&w,&wbd,&dw}) { float* p=(float*)m->get_data_handle(); size_t n=m->get_desc().get_size()/4; for(size_t i=0;i<n;++i) p[i]=(i%7)*0.1f-0.3f; }
    convolution_forward f(fpd); convolution_backward_data bd(bdpd); convolution_backward_weights bw(bwpd);
    auto F=[&]{
      if (getenv("FRESH")) {  // a fresh output buffer per call (malloc'd, untouched), as a step's
        memory d2(fpd.dst_desc(), eng);
        f.execute(s,{{DNNL_ARG_SRC,src},{DNNL_ARG_WEIGHTS,w},{DNNL_ARG_BIAS,b},{DNNL_ARG_DST,d2}}); s.wait();
        return;
      }
      f.execute(s,{{DNNL_ARG_SRC,src},{DNNL_ARG_WEIGHTS,w},{DNNL_ARG_BIAS,b},{DNNL_ARG_DST,dst}}); s.wait(); };
    auto BD=[&]{ bd.execute(s,{{DNNL_ARG_DIFF_DST,ddst},{DNNL_ARG_WEIGHTS,wbd},{DNNL_ARG_DIFF_SRC,dsrc}}); s.wait(); };
    auto BW=[&]{ bw.execute(s,{{DNNL_ARG_SRC,src},{DNNL_ARG_DIFF_DST,ddst},{DNNL_ARG_DIFF_WEIGHTS,dw},{DNNL_ARG_DIFF_BIAS,db}}); s.wait(); };
    for(int i=0;i<3;++i){F();BD();BW();}
    double a=ms_of(F,21), c=ms_of(BD,21), d=ms_of(BW,21); tot[0]+=a; tot[1]+=c; tot[2]+=d;
    printf("N%d C%d K%d H%d  fwd %.3f %s  bwd_data %.3f %s  bwd_w %.3f %s\n", N,C,K,H, a, fpd.impl_info_str(), c, bdpd.impl_info_str(), d, bwpd.impl_info_str());
  }
  printf("total fwd %.2f bwd_data %.2f bwd_w %.2f ms\n", tot[0], tot[1], tot[2]);
}
