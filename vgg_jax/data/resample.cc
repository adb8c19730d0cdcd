// Pillow's antialiased bicubic resize of a box of a uint8 RGB image, bit for
// bit, for the training crops (vgg_jax/data/resample.py says when it is used).
//
// Why: Pillow resamples one output value at a time with scalar integer
// arithmetic and keeps RGB images as four bytes per pixel, so a 224 crop of a
// stored 500x375 photograph spent ~800 of its ~1,060 us in Pillow's resize
// and ~70 more unpacking the pixels into Pillow. Here the same fixed-point
// sums run on packed RGB with the row pass vectorised over a pixel's channels
// (four rows at a time) and the column pass over a row's bytes, and a batch's
// crops are made in one call from Python: that crop in 213 us against
// Pillow's 948 (experiments/PERFORMANCE.md).
//
// Bit-exactness: the filter taps are computed exactly as Pillow 13's
// Resample.c computes them (same double expressions, in the same order, no
// contraction into FMAs: -ffp-contract=off), the taps are the same 22-bit
// integers, and the sums are integer sums, whose order does not matter; the
// passes run in Pillow's order and round to uint8 between them as Pillow does.
// tests/test_resample.py compares with Pillow on thousands of random shapes.
//
// The taps, bounds and pass order are adapted from Pillow's
// src/libImaging/Resample.c, under Pillow's MIT-CMU license:
//
//   The Python Imaging Library (PIL) is
//     Copyright (c) 1997-2011 by Secret Labs AB
//     Copyright (c) 1995-2011 by Fredrik Lundh and contributors
//   Pillow is the friendly PIL fork. It is
//     Copyright (c) 2010 by Jeffrey 'Alex' Clark and contributors
//
//   Permission to use, copy, modify and distribute this software and its
//   documentation for any purpose and without fee is hereby granted, provided
//   that the above copyright notice appears in all copies, and that both that
//   copyright notice and this permission notice appear in supporting
//   documentation, and that the name of Secret Labs AB or the author not be used
//   in advertising or publicity pertaining to distribution of the software
//   without specific, written prior permission.
//
//   SECRET LABS AB AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD TO THIS
//   SOFTWARE, INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS.
//   IN NO EVENT SHALL SECRET LABS AB OR THE AUTHOR BE LIABLE FOR ANY SPECIAL,
//   INDIRECT OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM
//   LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE
//   OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR
//   PERFORMANCE OF THIS SOFTWARE.

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

// A batch of small images shares few distinct boxes per axis (CIFAR-10's crops at
// S = 37: six offsets each way), so one call computes each axis's taps once.
// References stay valid until the next `MakeRoom` (no reallocation in between).
class TapsCache {
 public:
  TapsCache() { entries_.reserve(kMaxEntries); }

  // Room for an image's two axes.
  void MakeRoom() {
    if (entries_.size() + 2 > kMaxEntries) entries_.clear();
  }

  const Taps &Get(int in_size, float in0, float in1, int out_size) {
    for (const Entry &e : entries_) {
      if (e.in_size == in_size && e.in0 == in0 && e.in1 == in1 && e.out_size == out_size) {
        return e.taps;
      }
    }
    entries_.push_back({in_size, in0, in1, out_size, ComputeTaps(in_size, in0, in1, out_size)});
    return entries_.back().taps;
  }

 private:
  struct Entry {
    int in_size;
    float in0, in1;
    int out_size;
    Taps taps;
  };
  static constexpr size_t kMaxEntries = 64;
  std::vector<Entry> entries_;
};

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
// A pixel's three channels (and the next pixel's red, unused) in four int32
// lanes; four rows at a time share each output's bounds and taps.
__attribute__((target("sse4.1"))) inline __m128i LoadPixel(const uint8_t *p) {
  int32_t four;
  std::memcpy(&four, p, 4);
  return _mm_cvtepu8_epi32(_mm_cvtsi32_si128(four));
}

__attribute__((target("sse4.1"))) inline __m128i LoadLastPixel(const uint8_t *p) {
  int32_t three = 0;
  std::memcpy(&three, p, 3);
  return _mm_cvtepu8_epi32(_mm_cvtsi32_si128(three));
}

__attribute__((target("sse4.1"))) inline void StorePixel(__m128i sum, uint8_t *o) {
  __m128i v = _mm_srai_epi32(sum, kPrecisionBits);
  v = _mm_packus_epi16(_mm_packs_epi32(v, v), v);  // saturates to 0..255 as Clip8
  int32_t packed = _mm_cvtsi128_si32(v);
  std::memcpy(o, &packed, 3);
}

__attribute__((target("sse4.1"))) void RowPassSse41(const Plane &in, int first_row, int rows,
                                                   const Taps &t, int out_width,
                                                   uint8_t *out) {
  const __m128i half = _mm_set1_epi32(kHalf);
  const int64_t out_row = static_cast<int64_t>(out_width) * 3;
  // The last pixel of the data's last row has no fourth byte after it: that
  // row goes alone, through the careful load.
  const int careful_row = in.slack ? -1 : in.height - 1;
  int y = 0;
  for (; y + 4 <= rows && !(first_row + y <= careful_row && careful_row < first_row + y + 4);
       y += 4) {
    const uint8_t *l0 = in.data + (first_row + y) * in.stride;
    const uint8_t *l1 = l0 + in.stride, *l2 = l1 + in.stride, *l3 = l2 + in.stride;
    uint8_t *o = out + y * out_row;
    for (int xx = 0; xx < out_width; ++xx) {
      const int xmin = t.bounds[2 * xx], xmax = t.bounds[2 * xx + 1];
      const int32_t *k = &t.taps[static_cast<size_t>(xx) * t.ksize];
      __m128i s0 = half, s1 = half, s2 = half, s3 = half;
      for (int x = 0; x < xmax; ++x) {
        const int offset = (x + xmin) * 3;
        const __m128i w = _mm_set1_epi32(k[x]);
        s0 = _mm_add_epi32(s0, _mm_mullo_epi32(LoadPixel(l0 + offset), w));
        s1 = _mm_add_epi32(s1, _mm_mullo_epi32(LoadPixel(l1 + offset), w));
        s2 = _mm_add_epi32(s2, _mm_mullo_epi32(LoadPixel(l2 + offset), w));
        s3 = _mm_add_epi32(s3, _mm_mullo_epi32(LoadPixel(l3 + offset), w));
      }
      StorePixel(s0, o + 3 * xx);
      StorePixel(s1, o + out_row + 3 * xx);
      StorePixel(s2, o + 2 * out_row + 3 * xx);
      StorePixel(s3, o + 3 * out_row + 3 * xx);
    }
  }
  for (; y < rows; ++y) {
    const int row = first_row + y;
    const uint8_t *line = in.data + row * in.stride;
    const int safe_end = row == careful_row ? in.width - 1 : in.width;
    uint8_t *o = out + y * out_row;
    for (int xx = 0; xx < out_width; ++xx) {
      const int xmin = t.bounds[2 * xx], xmax = t.bounds[2 * xx + 1];
      const int32_t *k = &t.taps[static_cast<size_t>(xx) * t.ksize];
      __m128i sum = half;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t *p = line + (x + xmin) * 3;
        const __m128i pixel = x + xmin < safe_end ? LoadPixel(p) : LoadLastPixel(p);
        sum = _mm_add_epi32(sum, _mm_mullo_epi32(pixel, _mm_set1_epi32(k[x])));
      }
      StorePixel(sum, o + 3 * xx);
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

// Output row yy reads input rows bounds[2 yy] - row_offset onwards.
void ColumnPass(const Plane &in, const Taps &t, int row_offset, int out_height, uint8_t *out,
                int64_t out_stride) {
  thread_local std::vector<int32_t> sums;
  thread_local std::vector<const uint8_t *> lines;
  const int bytes = in.width * 3;
  sums.resize(bytes);
  lines.resize(t.ksize);
  for (int yy = 0; yy < out_height; ++yy) {
    int ymin = t.bounds[2 * yy] - row_offset, ymax = t.bounds[2 * yy + 1];
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
                 bool mirrored, uint8_t *out, TapsCache &cache) {
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
  cache.MakeRoom();
  const Taps *vertical = nullptr, *horizontal = nullptr;
  if ((need_horizontal && horizontal_first) || need_vertical) {
    vertical = &cache.Get(in.height, box[1], box[3], out_height);
  }
  if (need_horizontal) {
    horizontal = &cache.Get(in.width, box[0], box[2], out_width);
  }
  if (horizontal_first) {
    if (need_horizontal) {
      // Only the rows the column pass reads, which then count from the first.
      const std::vector<int> &bounds = vertical->bounds;
      const int first_row = bounds[0];
      const int rows = bounds[2 * out_height - 2] + bounds[2 * out_height - 1] - first_row;
      if (!need_vertical) {
        RowPass(in, first_row, rows, *horizontal, out_width, out);
      } else {
        temporary.resize(static_cast<size_t>(rows) * out_width * 3);
        RowPass(in, first_row, rows, *horizontal, out_width, temporary.data());
        Plane middle{temporary.data(), rows, out_width, out_stride, false};
        ColumnPass(middle, *vertical, first_row, out_height, out, out_stride);
      }
    } else if (need_vertical) {
      ColumnPass(in, *vertical, 0, out_height, out, out_stride);
    }
  } else {  // need_vertical holds here: the height changes
    if (need_horizontal) {
      // 4 spare bytes: the row pass may read a fourth byte at the last pixel.
      temporary.resize(static_cast<size_t>(out_height) * in.width * 3 + 4);
      ColumnPass(in, *vertical, 0, out_height, temporary.data(),
                 static_cast<int64_t>(in.width) * 3);
      Plane middle{temporary.data(), out_height, in.width,
                   static_cast<int64_t>(in.width) * 3, true};
      RowPass(middle, 0, out_height, *horizontal, out_width, out);
    } else {
      ColumnPass(in, *vertical, 0, out_height, out, out_stride);
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
  TapsCache cache;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t *p = params + 6 * i;
    float box[4];
    for (int j = 0; j < 4; ++j) box[j] = static_cast<float>(boxes[4 * i + j]);
    Plane in{reinterpret_cast<const uint8_t *>(p[0]), static_cast<int>(p[1]),
             static_cast<int>(p[2]), p[3], false};
    ResampleBox(in, box, out_width, out_height, p[4] != 0, reinterpret_cast<uint8_t *>(p[5]),
                cache);
  }
}

}  // extern "C"
