// Winograd F(4x4, 3x3) and F(2x2, 3x3) for stride-1 3x3 convolutions, T = float or double (see winograd.h).
//
// Data flow for one chunk of tiles (chunks keep V and M near the caches; threads share each phase):
//   1. input transform   x (NHWC) -> V (A2, tiles, Cp)    one (m+2)^2 patch per tile, Cin in vectors of 64 bytes
//   2. A2 GEMMs           M[xi] (tiles, Cout) = V[xi] * U[xi], U packed once per call in the GEMM's B layout
//   3. output transform  M (A2, tiles, Kp) -> y (NHWC)    m x m outputs per tile, plus the bias
// with A2 = (m+2)^2 and Cp, Kp the channel counts rounded up to whole vectors (zeros in V's padding).
//
// The transforms use the points 0, +-1, +-2 (F(4,3)) and 0, +-1 (F(2,3)), as in Lavin & Gray. Vectors are
// GCC vector extensions of 64 bytes: in the AVX-512 build of the loops (chosen at run time, like the GEMM's
// micro-kernel) each is one zmm register, elsewhere the compiler splits them.
#include "winograd.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "gemm.h"

// Vector values of 64 bytes passed between always-inline helpers: GCC notes the ABI for such arguments
// would differ without AVX-512; nothing here is called across that boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace vgg::cpu {

namespace {

// What both choices share: 0 (the GEMM) for an empty problem or VGG_CONV_ALGO=gemm (or direct), the forced tile size for a
// forced Winograd; in auto mode 0 for double (it is for gradient checks, where the GEMM's summation is the
// reference), for narrow layers (bound by the transforms, not the products) and for problems too small to amortise
// the filter transform. Otherwise `undecided`, and the caller's own heuristic picks.
constexpr int undecided = -1;
template <typename T> int common_tile_choice(const Winograd3x3& g) {
  if (g.N <= 0 || g.P <= 0 || g.Q <= 0 || g.Cin <= 0 || g.Cout <= 0) return 0;
  switch (conv_algo_setting()) {
    case ConvAlgo::gemm:
    case ConvAlgo::direct: return 0;  // conv2d.cpp takes the direct loops before asking
    case ConvAlgo::winograd4: return 4;
    case ConvAlgo::winograd2: return 2;
    case ConvAlgo::automatic: break;
  }
  if (!std::is_same_v<T, float> || g.Cin < 16 || g.Cout < 16) return 0;
  if (g.N * g.P * g.Q * g.Cin * g.Cout < (int64_t(1) << 22)) return 0;
  return undecided;
}

}  // namespace

template <typename T> int winograd_tile_choice(const Winograd3x3& g) {
  if (const int m = common_tile_choice<T>(g); m != undecided) return m;
  // F(2,3) on small maps, where F(4,3)'s 6x6 tiles would be mostly padding.
  return (g.P <= 14 || g.Q <= 14) ? 2 : 4;
}

template <typename T> int winograd_weight_tile_choice(const Winograd3x3& g) {
  if (const int m = common_tile_choice<T>(g); m != undecided) return m;
  // Each tile position's GEMM reduces over the tiles: with few of them (2x2 maps, small batches of 14x14 maps)
  // the GEMMs are too short to pay for the transforms and the Z partials. Measured on VGG shapes (2 cores,
  // AVX-512): F(4,3) 1.2-2.2x faster than the GEMM from 128 tiles of 6x6 up; relative error ~7e-6 (F(2,3) 5e-7).
  const int64_t tiles4 = g.N * ((g.P + 3) / 4) * ((g.Q + 3) / 4);
  if (g.P >= 4 && g.Q >= 4 && tiles4 >= 128) return 4;
  const int64_t tiles2 = g.N * ((g.P + 1) / 2) * ((g.Q + 1) / 2);
  return tiles2 >= 1024 ? 2 : 0;
}

namespace {

using detail::ceil_div;
using detail::round_up;

typedef float vfloat __attribute__((vector_size(64)));
typedef double vdouble __attribute__((vector_size(64)));
template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = vfloat; };
template <> struct VecOf<double> { using type = vdouble; };

template <typename T> constexpr int lanes = 64 / int(sizeof(T));

template <typename V> [[gnu::always_inline]] inline V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V> [[gnu::always_inline]] inline void store(void* p, V v) { std::memcpy(p, &v, sizeof(V)); }
// the first n (< lanes) values, zeros after
template <typename T, typename V> [[gnu::always_inline]] inline V load_part(const T* p, int64_t n) {
  T buf[lanes<T>] = {};
  std::memcpy(buf, p, sizeof(T) * size_t(n));
  return load<V>(buf);
}
template <typename T, typename V> [[gnu::always_inline]] inline void store_part(T* p, V v, int64_t n) {
  T buf[lanes<T>];
  store(buf, v);
  std::memcpy(p, buf, sizeof(T) * size_t(n));
}

// ---- the 1-D transforms, applied along columns then rows -----------------------------------------------
// t = B^T d (length m+2), u = G g (3 -> m+2), o = A^T s (m+2 -> m); s is the stride between elements.
template <int M> struct Transforms;

template <> struct Transforms<4> {
  template <typename V> [[gnu::always_inline]] static void input(const V* d, V* t, int s) {
    const V d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
    const V a = d4 - 4 * d2, b = d3 - 4 * d1, c = d4 - d2, e = 2 * (d3 - d1);
    t[0] = 4 * d0 - 5 * d2 + d4;
    t[s] = a + b;
    t[2 * s] = a - b;
    t[3 * s] = c + e;
    t[4 * s] = c - e;
    t[5 * s] = 4 * d1 - 5 * d3 + d5;
  }
  template <typename V, typename T> [[gnu::always_inline]] static void filter(const V* g, V* u, int s) {
    const V g0 = g[0], g1 = g[s], g2 = g[2 * s];
    const V even = g0 + g2;
    u[0] = g0 * T(1.0 / 4);
    u[s] = (even + g1) * T(-1.0 / 6);
    u[2 * s] = (even - g1) * T(-1.0 / 6);
    const V p = g0 * T(1.0 / 24) + g2 * T(1.0 / 6), q = g1 * T(1.0 / 12);
    u[3 * s] = p + q;
    u[4 * s] = p - q;
    u[5 * s] = g2;
  }
  template <typename V> [[gnu::always_inline]] static void output(const V* x, V* o, int s) {
    const V s1 = x[s], s2 = x[2 * s], s3 = x[3 * s], s4 = x[4 * s];
    const V p12 = s1 + s2, m12 = s1 - s2, p34 = s3 + s4, m34 = s3 - s4;
    o[0] = x[0] + p12 + p34;
    o[s] = m12 + 2 * m34;
    o[2 * s] = p12 + 4 * p34;
    o[3 * s] = m12 + 8 * m34 + x[5 * s];
  }
  // backward-weight: t = A y (m -> m+2, the transpose of `output`), z = G^T u (m+2 -> 3, of `filter`)
  template <typename V> [[gnu::always_inline]] static void grad_output(const V* y, V* t, int s) {
    const V y0 = y[0], y1 = y[s], y2 = y[2 * s], y3 = y[3 * s];
    const V e1 = y0 + y2, o1 = y1 + y3, e2 = y0 + 4 * y2, o2 = 2 * y1 + 8 * y3;
    t[0] = y0;
    t[s] = e1 + o1;
    t[2 * s] = e1 - o1;
    t[3 * s] = e2 + o2;
    t[4 * s] = e2 - o2;
    t[5 * s] = y3;
  }
  template <typename V, typename T> [[gnu::always_inline]] static void filter_grad(const V* u, V* z, int s) {
    const V u0 = u[0], u1 = u[s], u2 = u[2 * s], u3 = u[3 * s], u4 = u[4 * s], u5 = u[5 * s];
    const V p12 = u1 + u2, m12 = u1 - u2, p34 = u3 + u4, m34 = u3 - u4;
    z[0] = u0 * T(1.0 / 4) - p12 * T(1.0 / 6) + p34 * T(1.0 / 24);
    z[s] = m12 * T(-1.0 / 6) + m34 * T(1.0 / 12);
    z[2 * s] = (p34 - p12) * T(1.0 / 6) + u5;
  }
};

template <> struct Transforms<2> {
  template <typename V> [[gnu::always_inline]] static void input(const V* d, V* t, int s) {
    const V d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s];
    t[0] = d0 - d2;
    t[s] = d1 + d2;
    t[2 * s] = d2 - d1;
    t[3 * s] = d1 - d3;
  }
  template <typename V, typename T> [[gnu::always_inline]] static void filter(const V* g, V* u, int s) {
    const V g0 = g[0], g1 = g[s], g2 = g[2 * s];
    const V even = g0 + g2;
    u[0] = g0;
    u[s] = (even + g1) * T(0.5);
    u[2 * s] = (even - g1) * T(0.5);
    u[3 * s] = g2;
  }
  template <typename V> [[gnu::always_inline]] static void output(const V* x, V* o, int s) {
    o[0] = x[0] + x[s] + x[2 * s];
    o[s] = x[s] - x[2 * s] - x[3 * s];
  }
  template <typename V> [[gnu::always_inline]] static void grad_output(const V* y, V* t, int s) {
    const V y0 = y[0], y1 = y[s];
    t[0] = y0;
    t[s] = y0 + y1;
    t[2 * s] = y0 - y1;
    t[3 * s] = -y1;
  }
  template <typename V, typename T> [[gnu::always_inline]] static void filter_grad(const V* u, V* z, int s) {
    const V u0 = u[0], u1 = u[s], u2 = u[2 * s], u3 = u[3 * s];
    const V p12 = (u1 + u2) * T(0.5);
    z[0] = u0 + p12;
    z[s] = (u1 - u2) * T(0.5);
    z[2 * s] = p12 + u3;
  }
};

// Everything the three phases need, fixed for one call.
struct Plan {
  Winograd3x3 g;
  int64_t tiles_h, tiles_w, tiles;
  int64_t Cp, Kp;     // channel counts rounded up to whole vectors: row lengths of V and M
  int64_t chunk;      // tiles per chunk: V is (A2, chunk, Cp), M is (A2, chunk, Kp)
  int64_t n_pad, kc;  // packed filters: U[xi] is Cin x n_pad in the GEMM's KC blocks
};

// ---- phase 1: V[xi][tt][c] = (B^T d B)[xi] for the tiles t0 + tt, tt in [0, count) -------------------------
template <typename T, int M>
[[gnu::always_inline]] inline void input_transform(const Plan& pl, const T* x, T* V, int64_t t0, int64_t count) {
  using Vec = typename VecOf<T>::type;
  constexpr int A = M + 2, L = lanes<T>;
  const Winograd3x3& g = pl.g;
  const int64_t C = g.Cin, xi_stride = pl.chunk * pl.Cp;
  for (int64_t tt = 0; tt < count; ++tt) {
    const int64_t t = t0 + tt;
    const int64_t tx = t % pl.tiles_w, ty = (t / pl.tiles_w) % pl.tiles_h, n = t / (pl.tiles_w * pl.tiles_h);
    const int64_t h0 = ty * M - g.ph, w0 = tx * M - g.pw;
    const T* xn = x + n * g.H * g.W * C;
    const bool inside = h0 >= 0 && w0 >= 0 && h0 + A <= g.H && w0 + A <= g.W;
    T* out = V + tt * pl.Cp;
    for (int64_t c0 = 0; c0 < C; c0 += L) {
      const int64_t nc = std::min<int64_t>(L, C - c0);
      Vec d[A * A], tmp[A * A];
      if (inside && nc == L) {
        for (int i = 0; i < A; ++i)
          for (int j = 0; j < A; ++j) d[i * A + j] = load<Vec>(xn + ((h0 + i) * g.W + w0 + j) * C + c0);
      } else {
        for (int i = 0; i < A; ++i)
          for (int j = 0; j < A; ++j) {
            const int64_t h = h0 + i, w = w0 + j;
            if (h < 0 || h >= g.H || w < 0 || w >= g.W) d[i * A + j] = Vec{};
            else if (nc == L) d[i * A + j] = load<Vec>(xn + (h * g.W + w) * C + c0);
            else d[i * A + j] = load_part<T, Vec>(xn + (h * g.W + w) * C + c0, nc);
          }
      }
      for (int j = 0; j < A; ++j) Transforms<M>::input(d + j, tmp + j, A);
      for (int i = 0; i < A; ++i) Transforms<M>::input(tmp + i * A, d + i * A, 1);
      for (int xi = 0; xi < A * A; ++xi) store(out + xi * xi_stride + c0, d[xi]);
    }
  }
}

// ---- phase 3: y tile = A^T M A + bias for the tiles t0 + tt, tt in [0, count) ------------------------------
template <typename T, int M>
[[gnu::always_inline]] inline void output_transform(const Plan& pl, const T* Mb, const T* bias, T* y, int64_t t0,
                                                    int64_t count, int64_t k_begin, int64_t k_end) {
  using Vec = typename VecOf<T>::type;
  constexpr int A = M + 2, L = lanes<T>;
  const Winograd3x3& g = pl.g;
  const int64_t K = g.Cout, xi_stride = pl.chunk * pl.Kp;
  for (int64_t tt = 0; tt < count; ++tt) {
    const int64_t t = t0 + tt;
    const int64_t tx = t % pl.tiles_w, ty = (t / pl.tiles_w) % pl.tiles_h, n = t / (pl.tiles_w * pl.tiles_h);
    const int64_t p0 = ty * M, q0 = tx * M;
    const int64_t rows = std::min<int64_t>(M, g.P - p0), cols = std::min<int64_t>(M, g.Q - q0);
    T* yn = y + n * g.P * g.Q * K;
    const T* in = Mb + tt * pl.Kp;
    for (int64_t k0 = k_begin; k0 < k_end; k0 += L) {
      const int64_t nk = std::min<int64_t>(L, k_end - k0);
      Vec s[A * A], tmp[M * A], o[M * M];
      for (int xi = 0; xi < A * A; ++xi) s[xi] = load<Vec>(in + xi * xi_stride + k0);
      for (int j = 0; j < A; ++j) Transforms<M>::output(s + j, tmp + j, A);
      for (int i = 0; i < M; ++i) Transforms<M>::output(tmp + i * A, o + i * M, 1);
      const Vec b = !bias ? Vec{} : nk == L ? load<Vec>(bias + k0) : load_part<T, Vec>(bias + k0, nk);
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
          T* dst = yn + ((p0 + i) * g.Q + q0 + j) * K + k0;
          if (nk == L) store(dst, o[i * M + j] + b);
          else store_part(dst, o[i * M + j] + b, nk);
        }
    }
  }
}

// ---- backward-weight, phase 1b: D[xi][tt][k] = (A dY A^T)[xi] for the tiles t0 + tt, channels [k_begin, k_end)
// Outputs past P or Q read as zeros, so partial tiles at the border contribute nothing there.
template <typename T, int M>
[[gnu::always_inline]] inline void grad_output_transform(const Plan& pl, const T* dy, T* D, int64_t t0, int64_t count,
                                                         int64_t k_begin, int64_t k_end) {
  using Vec = typename VecOf<T>::type;
  constexpr int A = M + 2, L = lanes<T>;
  const Winograd3x3& g = pl.g;
  const int64_t K = g.Cout, xi_stride = pl.chunk * pl.Kp;
  for (int64_t tt = 0; tt < count; ++tt) {
    const int64_t t = t0 + tt;
    const int64_t tx = t % pl.tiles_w, ty = (t / pl.tiles_w) % pl.tiles_h, n = t / (pl.tiles_w * pl.tiles_h);
    const int64_t p0 = ty * M, q0 = tx * M;
    const int64_t rows = std::min<int64_t>(M, g.P - p0), cols = std::min<int64_t>(M, g.Q - q0);
    const T* dyn = dy + n * g.P * g.Q * K;
    T* out = D + tt * pl.Kp;
    for (int64_t k0 = k_begin; k0 < k_end; k0 += L) {
      const int64_t nk = std::min<int64_t>(L, k_end - k0);
      Vec d[M * M], tmp[A * M], o[A * A];
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < M; ++j) {
          const T* src = dyn + ((p0 + i) * g.Q + q0 + j) * K + k0;
          d[i * M + j] = (i >= rows || j >= cols) ? Vec{} : nk == L ? load<Vec>(src) : load_part<T, Vec>(src, nk);
        }
      for (int j = 0; j < M; ++j) Transforms<M>::grad_output(d + j, tmp + j, M);
      for (int i = 0; i < A; ++i) Transforms<M>::grad_output(tmp + i * M, o + i * A, 1);
      for (int xi = 0; xi < A * A; ++xi) store(out + xi * xi_stride + k0, o[xi]);
    }
  }
}

// ---- backward-weight, last phase: dw[k, r, s, c] = (G^T Z[k][c] G)(r, s) for k in [k_begin, k_end) -------------
// Z (A2, Cout, Cin) row-major.
template <typename T, int M>
[[gnu::always_inline]] inline void filter_grad_transform(const Plan& pl, const T* Z, T* dw, int64_t k_begin,
                                                         int64_t k_end) {
  using Vec = typename VecOf<T>::type;
  constexpr int A = M + 2, L = lanes<T>;
  const int64_t C = pl.g.Cin, K = pl.g.Cout, xi_stride = K * C;
  for (int64_t k = k_begin; k < k_end; ++k)
    for (int64_t c0 = 0; c0 < C; c0 += L) {
      const int64_t nc = std::min<int64_t>(L, C - c0);
      Vec z[A * A], tmp[3 * A], o[9];
      for (int xi = 0; xi < A * A; ++xi) {
        const T* src = Z + xi * xi_stride + k * C + c0;
        z[xi] = nc == L ? load<Vec>(src) : load_part<T, Vec>(src, nc);
      }
      for (int j = 0; j < A; ++j) Transforms<M>::template filter_grad<Vec, T>(z + j, tmp + j, A);
      for (int r = 0; r < 3; ++r) Transforms<M>::template filter_grad<Vec, T>(tmp + r * A, o + r * 3, 1);
      for (int rs = 0; rs < 9; ++rs) {
        T* dst = dw + (k * 9 + rs) * C + c0;
        if (nc == L) store(dst, o[rs]);
        else store_part(dst, o[rs], nc);
      }
    }
}

// ---- filters: U[xi] (Cin, Cout) = (G g G^T)[xi], written in the GEMM's packed-B layout --------------------
// f.load(rs, i, k0, n) gives the vector g[k0 .. k0+n)[i](r, s), rs = 3r + s, zeros past n. Handles input
// channels [i0, i1); columns past Cout (up to n_pad) become zeros. The loops run along the packed layout
// (input channel innermost) so the stores of each tile position fill consecutive rows of one panel.
template <typename T, int M, typename Filters>
[[gnu::always_inline]] inline void filter_transform(const Plan& pl, const Filters& f, T* U, int64_t i0, int64_t i1,
                                                    int nr) {
  using Vec = typename VecOf<T>::type;
  constexpr int A = M + 2, L = lanes<T>;
  const int64_t Ci = pl.g.Cin, K = pl.g.Cout;
  for (int64_t k0 = 0; k0 < pl.n_pad; k0 += L) {
    const int64_t nk = std::clamp<int64_t>(K - k0, 0, L);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t pc = (i / pl.kc) * pl.kc, kc = std::min(pl.kc, Ci - pc);
      Vec gv[9], tmp[A * 3], u[A * A];
      for (int rs = 0; rs < 9; ++rs) gv[rs] = nk > 0 ? f.template load<T, Vec>(rs, i, k0, nk) : Vec{};
      for (int s = 0; s < 3; ++s) Transforms<M>::template filter<Vec, T>(gv + s, tmp + s, 3);
      for (int r = 0; r < A; ++r) Transforms<M>::template filter<Vec, T>(tmp + r * 3, u + r * A, 1);
      T* dst = U + pc * pl.n_pad + (k0 / nr) * kc * nr + (i - pc) * nr + k0 % nr;
      for (int xi = 0; xi < A * A; ++xi) store(dst + xi * Ci * pl.n_pad, u[xi]);
    }
  }
}

struct ForwardFilters {  // w (Cout, 3, 3, Cin): g[o][i](r, s) = w[o, r, s, i], gathered along o
  const void* w;
  int64_t Ci;
  template <typename T, typename Vec>
  [[gnu::always_inline]] Vec load(int rs, int64_t i, int64_t k0, int64_t n) const {
    const T* p = static_cast<const T*>(w) + (k0 * 9 + rs) * Ci + i;
    T buf[lanes<T>] = {};
    for (int64_t l = 0; l < n; ++l) buf[l] = p[l * 9 * Ci];
    return ::vgg::cpu::load<Vec>(buf);
  }
};
struct FlippedFilters {  // w (Cin, 3, 3, Cout) read rotated: g[o][i](r, s) = w[i, 2-r, 2-s, o], contiguous along o
  const void* w;
  int64_t K;
  template <typename T, typename Vec>
  [[gnu::always_inline]] Vec load(int rs, int64_t i, int64_t k0, int64_t n) const {
    const T* p = static_cast<const T*>(w) + (i * 9 + 8 - rs) * K + k0;
    return n == lanes<T> ? ::vgg::cpu::load<Vec>(p) : load_part<T, Vec>(p, n);
  }
};

#define VGG_WINO_ENTRY_POINTS(ATTR, SUFFIX)                                                                     \
  template <typename T, int M>                                                                                \
  ATTR void input_##SUFFIX(const Plan& pl, const T* x, T* V, int64_t t0, int64_t count) {                    \
    input_transform<T, M>(pl, x, V, t0, count);                                                               \
  }                                                                                                           \
  template <typename T, int M>                                                                                \
  ATTR void output_##SUFFIX(const Plan& pl, const T* Mb, const T* bias, T* y, int64_t t0, int64_t count,    \
                            int64_t k0, int64_t k1) {                                                         \
    output_transform<T, M>(pl, Mb, bias, y, t0, count, k0, k1);                                               \
  }                                                                                                           \
  template <typename T, int M>                                                                                \
  ATTR void grad_output_##SUFFIX(const Plan& pl, const T* dy, T* D, int64_t t0, int64_t count, int64_t k0,   \
                                 int64_t k1) {                                                                \
    grad_output_transform<T, M>(pl, dy, D, t0, count, k0, k1);                                                \
  }                                                                                                           \
  template <typename T, int M>                                                                                \
  ATTR void filter_grad_##SUFFIX(const Plan& pl, const T* Z, T* dw, int64_t k0, int64_t k1) {                 \
    filter_grad_transform<T, M>(pl, Z, dw, k0, k1);                                                           \
  }                                                                                                           \
  template <typename T, int M, typename F>                                                                    \
  ATTR void filters_##SUFFIX(const Plan& pl, const F& f, T* U, int64_t i0, int64_t i1, int nr) {             \
    filter_transform<T, M>(pl, f, U, i0, i1, nr);                                                             \
  }

VGG_WINO_ENTRY_POINTS(, base)
#if defined(__x86_64__) || defined(__i386__)
VGG_WINO_ENTRY_POINTS(__attribute__((target("avx512f"))), avx512)
#define VGG_WINO_HAVE_AVX512 1
#endif
#undef VGG_WINO_ENTRY_POINTS

// Stands in for the B packer: gemm_task reads the pre-packed filters and never calls it.
template <typename T> struct PrepackedB {
  void operator()(T*, int, int64_t, int64_t, int64_t, int64_t) const {}
};

// Chunk size: each thread runs whole chunks (input transform, A2 GEMMs, output transform) on its own buffers, so
// a call has just two barriers (after the filter transform, at the end): on a busy machine every barrier can
// wait out a descheduled thread. V and M of one chunk take about this many bytes, near the core's L2; the GEMMs
// re-read the packed filters from the outer cache once per chunk.
constexpr int64_t chunk_bytes = int64_t(6) << 20;

// The AVX-512 transforms go with the AVX-512 GEMM kernel, so VGG_CPU_ISA=avx2 or scalar caps both.
template <typename T> bool wide_transforms(const MicroKernel<T>& uk) {
#ifdef VGG_WINO_HAVE_AVX512
  return std::strcmp(uk.name, "avx512") == 0;
#else
  return false;
#endif
}

// The tile grid and padded channel counts of F(M x M, 3 x 3) on g, for forward and backward-weight alike;
// chunk and n_pad (packed filters, forward only) stay 0 for the caller to set.
template <typename T, int M> Plan tile_plan(const Winograd3x3& g, const MicroKernel<T>& uk) {
  Plan pl;
  pl.g = g;
  pl.tiles_h = ceil_div(g.P, M);
  pl.tiles_w = ceil_div(g.Q, M);
  pl.tiles = g.N * pl.tiles_h * pl.tiles_w;
  pl.Cp = round_up(g.Cin, lanes<T>);
  pl.Kp = round_up(g.Cout, lanes<T>);
  pl.chunk = 0;
  pl.n_pad = 0;
  pl.kc = uk.kc;
  return pl;
}

template <typename T, int M>
void run(const T* x, const T* w, bool flipped, const T* bias, T* y, const Winograd3x3& g) {
  constexpr int A = M + 2, A2 = A * A;
  const MicroKernel<T>& uk = micro_kernel<T>();
  const bool wide = wide_transforms(uk);
  const int threads = available_threads();
  Plan pl = tile_plan<T, M>(g, uk);
  pl.n_pad = round_up(g.Cout, uk.nr);
  // Tasks are chunks of tiles, each at most chunk_bytes of V and M, in whole rounds of `threads`. When there
  // are fewer chunks than threads (deep layers, small maps), the output channels are split into groups as
  // well: each task then re-does its chunk's input transform, but reads only its share of the filters.
  const int64_t per_tile = int64_t(A2) * (pl.Cp + pl.Kp) * int64_t(sizeof(T));
  const int64_t max_tiles = std::max<int64_t>(uk.mr, chunk_bytes / per_tile);
  int64_t nchunks = ceil_div(pl.tiles, max_tiles);
  int64_t kgroups = 1;
  if (nchunks >= threads) nchunks = round_up(nchunks, threads);
  else kgroups = std::min(ceil_div(threads, nchunks), pl.n_pad / uk.nr);
  pl.chunk = ceil_div(pl.tiles, nchunks);
  if (pl.chunk > uk.mr) pl.chunk = std::min(round_up(pl.chunk, uk.mr), max_tiles);  // whole row panels if it fits
  const int64_t chunks = ceil_div(pl.tiles, pl.chunk);
  const int64_t kgroup = round_up(ceil_div(pl.n_pad, kgroups), uk.nr);
  kgroups = ceil_div(g.Cout, kgroup);

  const int64_t Ci = g.Cin, K = g.Cout;
  T* U = thread_workspace<T>(Slot::wino_filter, size_t(A2 * Ci * pl.n_pad));
  const int nr = uk.nr;
  constexpr int64_t filter_block = 32;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t i0 = 0; i0 < Ci; i0 += filter_block) {
      const int64_t i1 = std::min(Ci, i0 + filter_block);
      if (flipped) {
        const FlippedFilters f{w, K};
        wide ? filters_avx512<T, M>(pl, f, U, i0, i1, nr) : filters_base<T, M>(pl, f, U, i0, i1, nr);
      } else {
        const ForwardFilters f{w, Ci};
        wide ? filters_avx512<T, M>(pl, f, U, i0, i1, nr) : filters_base<T, M>(pl, f, U, i0, i1, nr);
      }
    }
    T* V = thread_workspace<T>(Slot::wino_input, size_t(A2 * pl.chunk * pl.Cp));
    T* Mb = thread_workspace<T>(Slot::wino_output, size_t(A2 * pl.chunk * pl.Kp));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < chunks * kgroups; ++task) {
      if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining tasks, throw after the region
      const int64_t c = task / kgroups, k0 = (task % kgroups) * kgroup, k1 = std::min(K, k0 + kgroup);
      const int64_t t0 = c * pl.chunk, count = std::min(pl.chunk, pl.tiles - t0);
      wide ? input_avx512<T, M>(pl, x, V, t0, count) : input_base<T, M>(pl, x, V, t0, count);
      for (int xi = 0; xi < A2; ++xi)
        detail::gemm_task(uk, 0, count, k0, k1, Ci, StridedA<T>{V + xi * pl.chunk * pl.Cp, pl.Cp, 1}, PrepackedB<T>{},
                          U + xi * Ci * pl.n_pad, pl.n_pad, Mb + xi * pl.chunk * pl.Kp, pl.Kp, false,
                          static_cast<const T*>(nullptr));
      wide ? output_avx512<T, M>(pl, Mb, bias, y, t0, count, k0, k1) : output_base<T, M>(pl, Mb, bias, y, t0, count, k0, k1);
    }
  }
}

// Backward-weight. Tiles are cut into `splits` fixed ranges (from the shape alone); each split sums its tiles, chunk
// by chunk in order, into its own Z partial (A2, Cout, Cin); the partials are added in split order by the final
// transform. Tasks are (split, output-channel group): a group re-does its split's input transform but reads and
// writes only its rows of D and Z, so groups change no sum and can follow the thread count.
template <typename T, int M> void run_backward_weight(const T* x, const T* dy, T* dw, const Winograd3x3& g) {
  constexpr int A = M + 2, A2 = A * A, L = lanes<T>;
  const MicroKernel<T>& uk = micro_kernel<T>();
  const bool wide = wide_transforms(uk);
  const int threads = available_threads();
  Plan pl = tile_plan<T, M>(g, uk);
  const int64_t C = g.Cin, K = g.Cout, zsize = int64_t(A2) * K * C;
  // Chunks of whole KC blocks (the GEMM's reduction blocks), V and D of one chunk within about chunk_bytes.
  const int64_t per_tile = int64_t(A2) * (pl.Cp + pl.Kp) * int64_t(sizeof(T));
  pl.chunk = std::clamp<int64_t>((chunk_bytes / per_tile) / uk.kc * uk.kc, uk.kc, 4 * uk.kc);
  // Splits: enough for 8 threads' worth of balance on big problems, at least 4 chunks each, at most 64 MiB of Z.
  const int64_t splits = std::clamp<int64_t>(
      std::min(ceil_div(pl.tiles, 4 * pl.chunk), (int64_t(64) << 20) / (zsize * int64_t(sizeof(T)))), 1, 8);
  const int64_t split_tiles = ceil_div(pl.tiles, splits);
  const int64_t kgroups = std::clamp<int64_t>(ceil_div(2 * threads, splits), 1, std::max<int64_t>(1, K / 64));
  const int64_t kgroup = round_up(ceil_div(K, kgroups), L);
  T* Z = thread_workspace<T>(Slot::wino_filter, size_t(splits * zsize));
  // columns of Z per GEMM call: keeps the C block (K x 256) that every KC block updates inside L2
  constexpr int64_t col_block = 256;
#pragma omp parallel num_threads(threads)
  {
    T* V = thread_workspace<T>(Slot::wino_input, size_t(A2 * pl.chunk * pl.Cp));
    T* D = thread_workspace<T>(Slot::wino_output, size_t(A2 * pl.chunk * pl.Kp));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < splits * ceil_div(K, kgroup); ++task) {
      if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining tasks, throw after the region
      const int64_t sp = task / ceil_div(K, kgroup);
      const int64_t k0 = (task % ceil_div(K, kgroup)) * kgroup, k1 = std::min(K, k0 + kgroup);
      const int64_t s0 = sp * split_tiles, s1 = std::min(pl.tiles, s0 + split_tiles);
      T* Zs = Z + sp * zsize;
      if (s1 <= s0)
        for (int xi = 0; xi < A2; ++xi) std::fill(Zs + xi * K * C + k0 * C, Zs + xi * K * C + k1 * C, T(0));
      for (int64_t t0 = s0; t0 < s1; t0 += pl.chunk) {
        const int64_t count = std::min(pl.chunk, s1 - t0);
        wide ? input_avx512<T, M>(pl, x, V, t0, count) : input_base<T, M>(pl, x, V, t0, count);
        wide ? grad_output_avx512<T, M>(pl, dy, D, t0, count, k0, k1)
             : grad_output_base<T, M>(pl, dy, D, t0, count, k0, k1);
        for (int xi = 0; xi < A2; ++xi)
          for (int64_t j0 = 0; j0 < C; j0 += col_block)
            // Z[xi] rows [k0, k1) (+)= D[xi]^T (K, count) * V[xi] (count, C): A(k, t) = D[t][k], B(t, c) = V[t][c]
            detail::gemm_task(uk, k0, k1, j0, std::min(C, j0 + col_block), count,
                              StridedA<T>{D + xi * pl.chunk * pl.Kp, 1, pl.Kp},
                              StridedB<T>{V + xi * pl.chunk * pl.Cp, pl.Cp, 1}, static_cast<const T*>(nullptr), 0,
                              Zs + xi * K * C, C, t0 != s0, static_cast<const T*>(nullptr));
      }
    }
    // add the partials in split order (into split 0), then transform back to 3x3
#pragma omp for schedule(static)
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t sp = 1; sp < splits; ++sp)
        for (int xi = 0; xi < A2; ++xi) {
          T* z0 = Z + xi * K * C + k * C;
          const T* zs = Z + sp * zsize + xi * K * C + k * C;
          for (int64_t c = 0; c < C; ++c) z0[c] += zs[c];
        }
      wide ? filter_grad_avx512<T, M>(pl, Z, dw, k, k + 1) : filter_grad_base<T, M>(pl, Z, dw, k, k + 1);
    }
  }
}

}  // namespace

template <typename T>
void winograd_conv3x3(const T* x, const T* w, bool flipped, const T* bias, T* y, const Winograd3x3& g, int m) {
  if (g.N * g.P * g.Q * g.Cout == 0) return;
  if (g.Cin == 0) {
    for (int64_t i = 0; i < g.N * g.P * g.Q; ++i)
      for (int64_t k = 0; k < g.Cout; ++k) y[i * g.Cout + k] = bias ? bias[k] : T(0);
    return;
  }
  if (m == 2) run<T, 2>(x, w, flipped, bias, y, g);
  else run<T, 4>(x, w, flipped, bias, y, g);
  throw_if_interrupted();
}

template <typename T>
void winograd_conv3x3_backward_weight(const T* x, const T* dy, T* dw, const Winograd3x3& g, int m) {
  if (g.Cout * g.Cin == 0) return;
  if (g.N * g.P * g.Q == 0) {
    std::fill(dw, dw + g.Cout * 9 * g.Cin, T(0));
    return;
  }
  if (m == 2) run_backward_weight<T, 2>(x, dy, dw, g);
  else run_backward_weight<T, 4>(x, dy, dw, g);
  throw_if_interrupted();
}

template int winograd_tile_choice<float>(const Winograd3x3&);
template int winograd_weight_tile_choice<float>(const Winograd3x3&);
template int winograd_weight_tile_choice<double>(const Winograd3x3&);
template void winograd_conv3x3_backward_weight<float>(const float*, const float*, float*, const Winograd3x3&, int);
template void winograd_conv3x3_backward_weight<double>(const double*, const double*, double*, const Winograd3x3&,
                                                       int);
template int winograd_tile_choice<double>(const Winograd3x3&);
template void winograd_conv3x3<float>(const float*, const float*, bool, const float*, float*, const Winograd3x3&, int);
template void winograd_conv3x3<double>(const double*, const double*, bool, const double*, double*,
                                       const Winograd3x3&, int);

}  // namespace vgg::cpu
