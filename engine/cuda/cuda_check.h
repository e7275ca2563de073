// Error checks for CUDA runtime and cuBLAS calls: a failure throws cepe::Error naming the call,
// the library's error string and the source location. Only for code compiled by nvcc.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "common/error.h"

/// Throws cepe::Error when a CUDA runtime call does not return cudaSuccess.
#define CEPE_CUDA_CHECK(call)                                                                  \
  do {                                                                                         \
    const cudaError_t cepe_cuda_err_ = (call);                                                 \
    if (cepe_cuda_err_ != cudaSuccess)                                                         \
      CEPE_THROW("CUDA error in " << #call << ": " << cudaGetErrorName(cepe_cuda_err_) << " (" \
                                  << cudaGetErrorString(cepe_cuda_err_) << ")");               \
  } while (0)

/// Throws cepe::Error when a cuBLAS call does not return CUBLAS_STATUS_SUCCESS.
#define CEPE_CUBLAS_CHECK(call)                                                                \
  do {                                                                                         \
    const cublasStatus_t cepe_cublas_st_ = (call);                                             \
    if (cepe_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                              \
      CEPE_THROW("cuBLAS error in " << #call << ": " << cublasGetStatusName(cepe_cublas_st_)   \
                                    << " (" << cublasGetStatusString(cepe_cublas_st_) << ")"); \
  } while (0)
