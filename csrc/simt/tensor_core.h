// The SIMT emulator's models of the tensor-core and asynchronous-copy instructions that csrc/cuda/mma.cuh wraps.
//
// mma.sync and ldmatrix are warp collectives: every lane of the warp must call the same model with the full mask
// (a lane that is missing, or waits elsewhere, is reported by the collective engine). Each model publishes this
// lane's operand pointers in a per-warp table, meets the other lanes at a __syncwarp, computes its own result
// from every lane's operands with the PTX ISA's fragment layouts, and meets them again before returning, so no
// lane leaves (and changes its operands or shared memory) while another still reads them.
//
// cp.async is modelled as a deferred copy: the source bytes are captured when the copy is issued, the
// destination is filled with a poison pattern at once, and the bytes land only when a cp.async.wait_group that
// covers the copy's group runs. A kernel that reads the destination without the matching wait reads poison
// (NaN as float, 0xFFC1 as bf16) and fails its test instead of passing by luck.
#pragma once

#include <cstddef>
#include <cstdint>

namespace simt::tc {

// 0x7FC1DEAD: a quiet NaN with a payload nothing computes; as two bf16 halves it is 0x7FC1 (NaN) and 0xDEAD.
constexpr uint32_t kAsyncPoison = 0x7FC1DEADu;

// D (16x8) = A (16x8, tf32) * B (8x8, tf32) + C, float32 accumulation. a[4], b[2]: fp32 bit patterns of which
// the tensor core reads only the top 19 bits (sign, exponent, 10 mantissa bits); c[4], d[4] float32.
void mma_m16n8k8_tf32(float* d, const uint32_t* a, const uint32_t* b, const float* c);
// D (16x8) = A (16x16, bf16) * B (16x8, bf16) + C; a[4], b[2] hold two bf16 each (lower column/row in bits 0-15).
void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c);
// ldmatrix.sync.aligned.m8n8.xCOUNT[.trans].shared.b16: `row` is this lane's row address (lanes 8i..8i+7 give
// the rows of matrix i; the others' are ignored), out[COUNT] receives this lane's 32-bit piece of each matrix.
void ldmatrix(uint32_t* out, int count, bool trans, const void* row);

// cp.async.ca.shared.global [dst], [src], bytes, src_bytes: copies src_bytes (0..bytes) and zero-fills the rest.
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
// Completes every committed group of this thread except the `pending` most recent ones.
void cp_async_wait(int pending);
// The linear thread of the current block whose cp.async still has the 4-byte word at `p` in flight, or -1.
int copy_in_flight(const void* p);

}  // namespace simt::tc
