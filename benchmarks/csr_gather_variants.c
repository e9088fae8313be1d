/* Stand-alone harness behind the choice of the unstructured batch-1 kernel in sparsernn/kernels/_kernels.c:
 * a 1760 x 1760 matrix, 10% non-zeros at random, uint16 indices; AVX2 gather, scalar with 8 accumulators,
 * 8 scalar loads packed into a vector (the one chosen), the same with 64-bit index loads, and a dense GEMV.
 * Build and run: gcc -O3 -march=native benchmarks/csr_gather_variants.c -o /tmp/variants && /tmp/variants */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
int n=1760; int32_t *rp; uint16_t *ix; float *v,*x,*y;
__attribute__((noinline)) void gather4(){
 for(int row=0;row<n;++row){int k=rp[row],e=rp[row+1];__m256 p[4]={_mm256_setzero_ps(),_mm256_setzero_ps(),_mm256_setzero_ps(),_mm256_setzero_ps()};
  for(;k+32<=e;k+=32) for(int u=0;u<4;++u){__m256i i=_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(ix+k+8*u)));p[u]=_mm256_fmadd_ps(_mm256_loadu_ps(v+k+8*u),_mm256_i32gather_ps(x,i,4),p[u]);}
  __m256 a=_mm256_add_ps(_mm256_add_ps(p[0],p[1]),_mm256_add_ps(p[2],p[3]));float t[8];_mm256_storeu_ps(t,a);float s=t[0]+t[1]+t[2]+t[3]+t[4]+t[5]+t[6]+t[7];
  for(;k<e;++k)s+=v[k]*x[ix[k]];y[row]=s;}}
__attribute__((noinline)) void scalar8(){
 for(int row=0;row<n;++row){int k=rp[row],e=rp[row+1];float a[8]={0};
  for(;k+8<=e;k+=8){
#pragma GCC novector
   for(int u=0;u<8;++u)a[u]+=v[k+u]*x[ix[k+u]];}
  float s=a[0]+a[1]+a[2]+a[3]+a[4]+a[5]+a[6]+a[7];for(;k<e;++k)s+=v[k]*x[ix[k]];y[row]=s;}}
__attribute__((noinline)) void manual8(){
 for(int row=0;row<n;++row){int k=rp[row],e=rp[row+1];__m256 p0=_mm256_setzero_ps(),p1=_mm256_setzero_ps();
  for(;k+16<=e;k+=16){
   __m256 g0=_mm256_set_ps(x[ix[k+7]],x[ix[k+6]],x[ix[k+5]],x[ix[k+4]],x[ix[k+3]],x[ix[k+2]],x[ix[k+1]],x[ix[k]]);
   __m256 g1=_mm256_set_ps(x[ix[k+15]],x[ix[k+14]],x[ix[k+13]],x[ix[k+12]],x[ix[k+11]],x[ix[k+10]],x[ix[k+9]],x[ix[k+8]]);
   p0=_mm256_fmadd_ps(_mm256_loadu_ps(v+k),g0,p0);p1=_mm256_fmadd_ps(_mm256_loadu_ps(v+k+8),g1,p1);}
  __m256 a=_mm256_add_ps(p0,p1);float t[8];_mm256_storeu_ps(t,a);float s=t[0]+t[1]+t[2]+t[3]+t[4]+t[5]+t[6]+t[7];
  for(;k<e;++k)s+=v[k]*x[ix[k]];y[row]=s;}}
__attribute__((noinline)) void manual64(){
 for(int row=0;row<n;++row){int k=rp[row],e=rp[row+1];__m256 p0=_mm256_setzero_ps(),p1=_mm256_setzero_ps();
  for(;k+16<=e;k+=16){
   uint64_t w0,w1,w2,w3; __builtin_memcpy(&w0,ix+k,8);__builtin_memcpy(&w1,ix+k+4,8);__builtin_memcpy(&w2,ix+k+8,8);__builtin_memcpy(&w3,ix+k+12,8);
   __m256 g0=_mm256_set_ps(x[w1>>48],x[(w1>>32)&0xffff],x[(w1>>16)&0xffff],x[w1&0xffff],x[w0>>48],x[(w0>>32)&0xffff],x[(w0>>16)&0xffff],x[w0&0xffff]);
   __m256 g1=_mm256_set_ps(x[w3>>48],x[(w3>>32)&0xffff],x[(w3>>16)&0xffff],x[w3&0xffff],x[w2>>48],x[(w2>>32)&0xffff],x[(w2>>16)&0xffff],x[w2&0xffff]);
   p0=_mm256_fmadd_ps(_mm256_loadu_ps(v+k),g0,p0);p1=_mm256_fmadd_ps(_mm256_loadu_ps(v+k+8),g1,p1);}
  __m256 a=_mm256_add_ps(p0,p1);float t[8];_mm256_storeu_ps(t,a);float s=t[0]+t[1]+t[2]+t[3]+t[4]+t[5]+t[6]+t[7];
  for(;k<e;++k)s+=v[k]*x[ix[k]];y[row]=s;}}
__attribute__((noinline)) void scalar4x(){
 for(int row=0;row<n;++row){int k=rp[row],e=rp[row+1];float a0=0,a1=0,a2=0,a3=0;
  for(;k+4<=e;k+=4){uint64_t w;__builtin_memcpy(&w,ix+k,8);
   a0+=v[k]*x[w&0xffff];a1+=v[k+1]*x[(w>>16)&0xffff];a2+=v[k+2]*x[(w>>32)&0xffff];a3+=v[k+3]*x[w>>48];}
  float s=a0+a1+a2+a3;for(;k<e;++k)s+=v[k]*x[ix[k]];y[row]=s;}}
__attribute__((noinline)) void dense(float*d){for(int r=0;r<n;++r){__m256 a0=_mm256_setzero_ps(),a1=a0,a2=a0,a3=a0;for(int c=0;c<n;c+=32){a0=_mm256_fmadd_ps(_mm256_loadu_ps(d+(size_t)r*n+c),_mm256_loadu_ps(x+c),a0);a1=_mm256_fmadd_ps(_mm256_loadu_ps(d+(size_t)r*n+c+8),_mm256_loadu_ps(x+c+8),a1);a2=_mm256_fmadd_ps(_mm256_loadu_ps(d+(size_t)r*n+c+16),_mm256_loadu_ps(x+c+16),a2);a3=_mm256_fmadd_ps(_mm256_loadu_ps(d+(size_t)r*n+c+24),_mm256_loadu_ps(x+c+24),a3);}
 float t[8];_mm256_storeu_ps(t,_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3)));y[r]=t[0]+t[1]+t[2]+t[3]+t[4]+t[5]+t[6]+t[7];}}
int main(){srand(1);rp=malloc(4*(n+1));ix=malloc(2*n*n);v=malloc(4*n*n);x=malloc(4*n);y=malloc(4*n);float*d=malloc(4L*n*n);
 int k=0;rp[0]=0;for(int r=0;r<n;++r){for(int c=0;c<n;++c){d[(size_t)r*n+c]=rand()/(float)RAND_MAX; if(rand()%10==0){ix[k]=c;v[k]=1.0f;k++;}}rp[r+1]=k;}
 for(int i=0;i<n;++i)x[i]=1;
 const char*names[]={"gather4","scalar8","manual8","dense","manual64","scalar4x"};
 for(int f=0;f<6;++f){double best=1e9;for(int rep=0;rep<30;++rep){double t=now();for(int i=0;i<20;++i){if(f==0)gather4();else if(f==1)scalar8();else if(f==2)manual8();else if(f==3)dense(d);else if(f==4)manual64();else scalar4x();}double el=(now()-t)/20;if(el<best)best=el;}printf("%s %.1f us  %.2f nnz/ns\n",names[f],best*1e6,k/(best*1e9));}
}
