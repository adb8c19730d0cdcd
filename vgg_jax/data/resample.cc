// Pillow's antialiased bicubic resize of a box of a uint8 RGB image, bit for
// bit, for the training crops (vgg_jax/data/resample.py says when it is used).
//
// Why: Pillow resamples one output value at a time with scalar integer
// arithmetic and keeps RGB images as four bytes per pixel, so a 224 crop of a
// stored 500x375 photograph spent ~800 of its ~1,060 us in Pillow's resize
// and ~70 more unpacking the pixels into Pillow. Here the same fixed-point
// sums run on packed RGB with the row pass vectorised over a pixel's channels
// and the column pass over a row's bytes, and a batch's crops are made in one
// call from Python.
//
// Bit-exactness: the filter taps are computed exactly as Pillow 13's
// Resample.c computes them (same double expressions, in the same order, no
// contraction into FMAs: -ffp-contract=off), the taps are the same 22-bit
// integers, and the sums are integer sums, whose order does not matter; the
// passes run in Pillow's order and round to uint8 between them as Pillow does.
// tests/test_resample.py compares with Pillow on thousands of random shapes.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VGG_JAX_X86 1
#endif

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

double BicubicFilter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
constexpr double kBicubicSupport = 2.0;

// One pass's taps: output i reads inputs bounds[2i] .. bounds[2i] + bounds[2i+1] - 1
// with the integer weights taps[i * ksize ...] (Pillow's precompute_coeffs and
// normalize_coeffs_8bpc).
struct Taps {
  int ksize = 0;
  std::vector<int> bounds;
  std::vector<int32_t> taps;
};

Taps ComputeTaps(int in_size, float in0, float in1, int out_size) {
  Taps t;
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = kBicubicSupport * filterscale;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.bounds.resize(2 * out_size);
  t.taps.assign(static_cast<size_t>(out_size) * t.ksize, 0);
  std::vector<double> k(t.ksize);
  double inv_filterscale = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    int x = 0;
    for (; x < xmax; ++x) {
      double w = BicubicFilter((x + xmin - center + 0.5) * inv_filterscale);
      k[x] = w;
      ww += w;
    }
    if (ww != 0.0) {
      for (x = 0; x < xmax; ++x) k[x] /= ww;
    }
    for (; x < t.ksize; ++x) k[x] = 0;
    int32_t *out = &t.taps[static_cast<size_t>(xx) * t.ksize];
    for (x = 0; x < t.ksize; ++x) {
      out[x] = k[x] < 0 ? static_cast<int>(-0.5 + k[x] * (1 << kPrecisionBits))
                        : static_cast<int>(0.5 + k[x] * (1 << kPrecisionBits));
    }
    t.bounds[2 * xx] = xmin;
    t.bounds[2 * xx + 1] = xmax;
  }
  return t;
}

inline uint8_t Clip8(int32_t sum) {
  int32_t v = sum >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// An image of packed RGB rows.
struct Plane {
  const uint8_t *data;
  int height, width;
  int64_t stride;  // bytes from one row to the next
  // Whether 4 bytes may be read at the last pixel (one past the data's end).
  bool slack;
};

void RowPassScalar(const Plane &in, int first_row, int rows, const Taps &t, int out_width,
                   uint8_t *out) {
  for (int y = 0; y < rows; ++y) {
    const uint8_t *line = in.data + (first_row + y) * in.stride;
    uint8_t *o = out + static_cast<int64_t>(y) * out_width * 3;
    for (int xx = 0; xx < out_width; ++xx) {
      int xmin = t.bounds[2 * xx], xmax = t.bounds[2 * xx + 1];
      const int32_t *k = &t.taps[static_cast<size_t>(xx) * t.ksize];
      int32_t s0 = kHalf, s1 = kHalf, s2 = kHalf;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t *p = line + (x + xmin) * 3;
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      o[3 * xx] = Clip8(s0);
      o[3 * xx + 1] = Clip8(s1);
      o[3 * xx + 2] = Clip8(s2);
    }
  }
}

#ifdef VGG_JAX_X86
// A pixel's three channels (and the next pixel's red, unused) in four int32 lanes.
__attribute__((target("sse4.1"))) void RowPassSse41(const Plane &in, int first_row, int rows,
                                                   const Taps &t, int out_width,
                                                   uint8_t *out) {
  const __m128i half = _mm_set1_epi32(kHalf);
  for (int y = 0; y < rows; ++y) {
    const int row = first_row + y;
    const uint8_t *line = in.data + row * in.stride;
    // The last pixel of the data's last row has no fourth byte after it.
    const int safe_end = (row == in.height - 1 && !in.slack) ? in.width - 1 : in.width;
    uint8_t *o = out + static_cast<int64_t>(y) * out_width * 3;
    for (int xx = 0; xx < out_width; ++xx) {
      int xmin = t.bounds[2 * xx], xmax = t.bounds[2 * xx + 1];
      const int32_t *k = &t.taps[static_cast<size_t>(xx) * t.ksize];
      __m128i sum = half;
      int x = 0;
      const int vector_end = std::min(xmax, safe_end - xmin);
      for (; x < vector_end; ++x) {
        int32_t four;
        std::memcpy(&four, line + (x + xmin) * 3, 4);
        __m128i pixel = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(four));
        sum = _mm_add_epi32(sum, _mm_mullo_epi32(pixel, _mm_set1_epi32(k[x])));
      }
      for (; x < xmax; ++x) {
        int32_t three = 0;
        std::memcpy(&three, line + (x + xmin) * 3, 3);
        __m128i pixel = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(three));
        sum = _mm_add_epi32(sum, _mm_mullo_epi32(pixel, _mm_set1_epi32(k[x])));
      }
      __m128i v = _mm_srai_epi32(sum, kPrecisionBits);
      v = _mm_packus_epi16(_mm_packs_epi32(v, v), v);  // saturates to 0..255 as Clip8
      int32_t packed = _mm_cvtsi128_si32(v);
      std::memcpy(o + 3 * xx, &packed, 3);
    }
  }
}
#endif

void RowPass(const Plane &in, int first_row, int rows, const Taps &t, int out_width,
             uint8_t *out) {
#ifdef VGG_JAX_X86
  static const bool sse41 = __builtin_cpu_supports("sse4.1");
  if (sse41) return RowPassSse41(in, first_row, rows, t, out_width, out);
#endif
  RowPassScalar(in, first_row, rows, t, out_width, out);
}

// Output row yy = the weighted sum of whole input rows: vectorised over the
// row's bytes (channels are independent and equally weighted).
#ifdef VGG_JAX_X86
__attribute__((target_clones("avx2", "default")))
#endif
void ColumnPassRow(const uint8_t *const *lines, const int32_t *k, int taps, int bytes,
                   int32_t *sums, uint8_t *out) {
  for (int j = 0; j < bytes; ++j) sums[j] = kHalf;
  for (int y = 0; y < taps; ++y) {
    const uint8_t *line = lines[y];
    const int32_t w = k[y];
    for (int j = 0; j < bytes; ++j) sums[j] += line[j] * w;
  }
  for (int j = 0; j < bytes; ++j) {
    int32_t v = sums[j] >> kPrecisionBits;
    out[j] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
  }
}

void ColumnPass(const Plane &in, const Taps &t, int out_height, uint8_t *out,
                int64_t out_stride) {
  thread_local std::vector<int32_t> sums;
  thread_local std::vector<const uint8_t *> lines;
  const int bytes = in.width * 3;
  sums.resize(bytes);
  lines.resize(t.ksize);
  for (int yy = 0; yy < out_height; ++yy) {
    int ymin = t.bounds[2 * yy], ymax = t.bounds[2 * yy + 1];
    for (int y = 0; y < ymax; ++y) lines[y] = in.data + (ymin + y) * in.stride;
    ColumnPassRow(lines.data(), &t.taps[static_cast<size_t>(yy) * t.ksize], ymax, bytes,
                  sums.data(), out + yy * out_stride);
  }
}

void MirrorRows(uint8_t *image, int height, int width) {
  for (int y = 0; y < height; ++y) {
    uint8_t *row = image + static_cast<int64_t>(y) * width * 3;
    for (int a = 0, b = width - 1; a < b; ++a, --b) {
      for (int c = 0; c < 3; ++c) std::swap(row[3 * a + c], row[3 * b + c]);
    }
  }
}

// Pillow 13's ImagingResampleInner for one RGB image (with _resize's crop
// shortcut): `out` is out_height x out_width x 3, contiguous.
void ResampleBox(const Plane &in, const float box[4], int out_width, int out_height,
                 bool mirrored, uint8_t *out) {
  const int64_t out_stride = static_cast<int64_t>(out_width) * 3;
  if (box[0] - static_cast<int>(box[0]) == 0 && box[2] - box[0] == out_width &&
      box[1] - static_cast<int>(box[1]) == 0 && box[3] - box[1] == out_height) {
    for (int y = 0; y < out_height; ++y) {
      std::memcpy(out + y * out_stride,
                  in.data + (static_cast<int>(box[1]) + y) * in.stride +
                      static_cast<int>(box[0]) * 3,
                  out_stride);
    }
    if (mirrored) MirrorRows(out, out_height, out_width);
    return;
  }
  const bool need_horizontal = out_width != in.width || box[0] || box[2] != out_width;
  const bool need_vertical = out_height != in.height || box[1] || box[3] != out_height;
  // Pillow goes down the columns first where the height shrinks by more than
  // twice what the width does.
  const bool horizontal_first = !((in.height - out_height) > 0 &&
                                  (in.height - out_height) > (in.width - out_width) * 2);
  thread_local std::vector<uint8_t> temporary;
  Taps vertical, horizontal;
  if ((need_horizontal && horizontal_first) || need_vertical) {
    vertical = ComputeTaps(in.height, box[1], box[3], out_height);
  }
  int first_row = 0, last_row = 0;
  if (need_horizontal) {
    if (horizontal_first) {
      first_row = vertical.bounds[0];
      last_row = vertical.bounds[2 * out_height - 2] + vertical.bounds[2 * out_height - 1];
      for (int i = 0; i < out_height; ++i) vertical.bounds[2 * i] -= first_row;
    }
    horizontal = ComputeTaps(in.width, box[0], box[2], out_width);
  }
  if (horizontal_first) {
    if (need_horizontal && need_vertical) {
      const int rows = last_row - first_row;
      temporary.resize(static_cast<size_t>(rows) * out_width * 3);
      RowPass(in, first_row, rows, horizontal, out_width, temporary.data());
      Plane middle{temporary.data(), rows, out_width, out_stride, false};
      ColumnPass(middle, vertical, out_height, out, out_stride);
    } else if (need_horizontal) {
      RowPass(in, first_row, last_row - first_row, horizontal, out_width, out);
    } else if (need_vertical) {
      ColumnPass(in, vertical, out_height, out, out_stride);
    }
  } else {  // need_vertical holds here: the height changes
    if (need_horizontal) {
      // 4 spare bytes: the row pass may read a fourth byte at the last pixel.
      temporary.resize(static_cast<size_t>(out_height) * in.width * 3 + 4);
      ColumnPass(in, vertical, out_height, temporary.data(),
                 static_cast<int64_t>(in.width) * 3);
      Plane middle{temporary.data(), out_height, in.width,
                   static_cast<int64_t>(in.width) * 3, true};
      RowPass(middle, 0, out_height, horizontal, out_width, out);
    } else {
      ColumnPass(in, vertical, out_height, out, out_stride);
    }
  }
  if (mirrored) MirrorRows(out, out_height, out_width);
}

}  // namespace

extern "C" {

// For each of `count` images, its row of `params` (int64: the address of its
// pixels, height, width, bytes from one row to the next, whether to mirror it,
// the address of its output) and its box boxes[4i .. 4i+3] (left, upper, right,
// lower as Pillow's `resize(box=...)` takes them, in double; rounded to float as
// Pillow rounds them): the box of the uint8 RGB image resampled to
// out_height x out_width x 3, contiguous, at the output's address. The caller
// checks the boxes (inside the image, not empty) and the arrays.
void VggJaxResampleBoxes(int64_t count, const int64_t *params, const double *boxes,
                         int32_t out_height, int32_t out_width) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t *p = params + 6 * i;
    float box[4];
    for (int j = 0; j < 4; ++j) box[j] = static_cast<float>(boxes[4 * i + j]);
    Plane in{reinterpret_cast<const uint8_t *>(p[0]), static_cast<int>(p[1]),
             static_cast<int>(p[2]), p[3], false};
    ResampleBox(in, box, out_width, out_height, p[4] != 0, reinterpret_cast<uint8_t *>(p[5]));
  }
}

}  // extern "C"
