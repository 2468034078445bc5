/* The CPU's own ceiling, for reading a benchmark's ratio: float32 fused multiply-add peak and memory
 * read bandwidth over `threads` threads. Built and run by bench/machine.py (cpu_ceiling) with the
 * system C compiler and -march=native, so the vectors are the widest this CPU has.
 *
 * FMA peak: each thread runs CHAINS independent chains of vector FMAs held in registers (enough
 * to cover the FMA latency on every pipe), no memory traffic. Read bandwidth: each thread sums its
 * slice of a buffer far larger than any cache, best of 5 passes.
 * Prints: "<fma GFLOP/s> <read GB/s>". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
#define WIDTH 16
#define CHAINS 12
#else
#define WIDTH 8 /* AVX2, NEON (as two halves) and others */
#define CHAINS 10
#endif
typedef float vec __attribute__((vector_size(WIDTH * sizeof(float))));

#define FMA_ITERS 200000000L
#define BUFFER_FLOATS (128L << 20) /* 512 MiB */

static float *buffer;
static int threads;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *fma_chains(void *out) {
  vec acc[CHAINS], b, c;
  for (int j = 0; j < WIDTH; j++) b[j] = 1.0000001f, c[j] = 1e-7f;
  for (int i = 0; i < CHAINS; i++) acc[i] = b * (float)i;
  for (long it = 0; it < FMA_ITERS; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < CHAINS; i++) acc[i] = acc[i] * b + c; /* contracted to one FMA (-ffp-contract) */
  }
  float s = 0;
  for (int i = 0; i < CHAINS; i++)
    for (int j = 0; j < WIDTH; j++) s += acc[i][j];
  *(float *)out = s; /* kept live so the loop is not removed */
  return NULL;
}

static void *read_slice(void *arg) {
  long id = (long)arg, n = BUFFER_FLOATS / threads / WIDTH * WIDTH;
  const vec *p = (const vec *)(buffer + id * n);
  vec s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
  for (long i = 0; i + 4 <= n / WIDTH; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
  s0 += s1 + s2 + s3;
  float s = 0;
  for (int j = 0; j < WIDTH; j++) s += s0[j];
  return (void *)(long)(s < 0);
}

static double run(void *(*fn)(void *), int repeats) {
  pthread_t th[256];
  float out[256];
  double best = 1e30;
  for (int r = 0; r < repeats; r++) {
    double t = now();
    for (long i = 0; i < threads; i++) pthread_create(&th[i], NULL, fn, fn == fma_chains ? (void *)&out[i] : (void *)i);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    t = now() - t;
    if (t < best) best = t;
  }
  return best;
}

int main(int argc, char **argv) {
  threads = argc > 1 ? atoi(argv[1]) : 1;
  if (threads < 1 || threads > 256) return 2;
  double fma_seconds = run(fma_chains, 3);
  double flops = 2.0 * WIDTH * CHAINS * FMA_ITERS * threads;
  buffer = aligned_alloc(64, BUFFER_FLOATS * sizeof(float));
  if (!buffer) return 3;
  for (long i = 0; i < BUFFER_FLOATS; i++) buffer[i] = 1.0f;
  double read_seconds = run(read_slice, 5);
  printf("%.1f %.2f\n", flops / fma_seconds / 1e9, BUFFER_FLOATS / threads / WIDTH * WIDTH * threads * 4.0 / read_seconds / 1e9);
  return 0;
}
