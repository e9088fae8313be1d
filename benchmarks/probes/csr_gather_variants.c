/* Stand-alone harness behind the choice of the unstructured batch-1 kernels in sparsernn/kernels/_kernels.c:
 * a 1760 x 1760 matrix, 10% non-zeros at random, uint16 indices. CSR: AVX2 gather, scalar with 8
 * accumulators, 8 scalar loads packed into a vector (csr_gather_u16), the same with 64-bit index loads, 4
 * scalar accumulators; the interleaved copy (SELL-8-40: rows sorted by length in windows of 40, 8 rows per
 * vector, 64-bit index loads; interleaved_u16, used for one column); a dense GEMV. The methods take turns,
 * 5 calls at a time, and each keeps its fastest turn, so a busy spell on the machine hits them all alike.
 * Build and run: gcc -O3 -march=native benchmarks/probes/csr_gather_variants.c -o /tmp/variants && /tmp/variants */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
const int n=1760; int32_t *rp; uint16_t *ix; float *v,*x,*y;
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
int ng; int32_t *gp, *order; uint16_t *six; float *sv; /* the interleaved copy */
static inline __m256 gather64(const uint16_t*i){uint64_t a,b;memcpy(&a,i,8);memcpy(&b,i+4,8);
 return _mm256_set_ps(x[b>>48],x[(b>>32)&0xffff],x[(b>>16)&0xffff],x[b&0xffff],x[a>>48],x[(a>>32)&0xffff],x[(a>>16)&0xffff],x[a&0xffff]);}
__attribute__((noinline)) void interleaved(){
 for(int g=0;g<ng;++g){int s=gp[g],e=gp[g+1];__m256 p0=_mm256_setzero_ps(),p1=p0,p2=p0,p3=p0;
  for(;s+4<=e;s+=4){p0=_mm256_fmadd_ps(_mm256_loadu_ps(sv+8*s),gather64(six+8*s),p0);p1=_mm256_fmadd_ps(_mm256_loadu_ps(sv+8*s+8),gather64(six+8*s+8),p1);
   p2=_mm256_fmadd_ps(_mm256_loadu_ps(sv+8*s+16),gather64(six+8*s+16),p2);p3=_mm256_fmadd_ps(_mm256_loadu_ps(sv+8*s+24),gather64(six+8*s+24),p3);}
  for(;s<e;++s)p0=_mm256_fmadd_ps(_mm256_loadu_ps(sv+8*s),gather64(six+8*s),p0);
  float t[8];_mm256_storeu_ps(t,_mm256_add_ps(_mm256_add_ps(p0,p1),_mm256_add_ps(p2,p3)));for(int l=0;l<8;++l)y[order[8*g+l]]=t[l];}}
static int *lens; static int longer(const void*a,const void*b){int i=*(const int*)a,j=*(const int*)b;return i/40!=j/40?i/40-j/40:lens[j]-lens[i];}
static void interleave(){lens=malloc(4*n);order=malloc(4*n);for(int r=0;r<n;++r){lens[r]=rp[r+1]-rp[r];order[r]=r;}qsort(order,n,4,longer);
 ng=n/8;gp=malloc(4*(ng+1));gp[0]=0;for(int g=0;g<ng;++g){int w=0;for(int l=0;l<8;++l)if(lens[order[8*g+l]]>w)w=lens[order[8*g+l]];gp[g+1]=gp[g]+w;}
 six=calloc(8*(size_t)gp[ng],2);sv=calloc(8*(size_t)gp[ng],4);
 for(int g=0;g<ng;++g)for(int l=0;l<8;++l){int r=order[8*g+l];for(int j=0;j<lens[r];++j){six[8*(gp[g]+j)+l]=ix[rp[r]+j];sv[8*(gp[g]+j)+l]=v[rp[r]+j];}}}
__attribute__((noinline)) void dense(float*d){for(int r=0;r<n;++r){__m256 a0=_mm256_setzero_ps(),a1=a0,a2=a0,a3=a0;for(int c=0;c<n;c+=32){a0=_mm256_fmadd_ps(_mm256_loadu_ps(d+(size_t)r*n+c),_mm256_loadu_ps(x+c),a0);a1=_mm256_fmadd_ps(_mm256_loadu_ps(d+(size_t)r*n+c+8),_mm256_loadu_ps(x+c+8),a1);a2=_mm256_fmadd_ps(_mm256_loadu_ps(d+(size_t)r*n+c+16),_mm256_loadu_ps(x+c+16),a2);a3=_mm256_fmadd_ps(_mm256_loadu_ps(d+(size_t)r*n+c+24),_mm256_loadu_ps(x+c+24),a3);}
 float t[8];_mm256_storeu_ps(t,_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3)));y[r]=t[0]+t[1]+t[2]+t[3]+t[4]+t[5]+t[6]+t[7];}}
int main(){srand(1);rp=malloc(4*(n+1));ix=malloc(2*n*n);v=malloc(4*n*n);x=malloc(4*n);y=malloc(4*n);float*d=malloc(4L*n*n),*ref=malloc(4*n);
 int k=0;rp[0]=0;for(int r=0;r<n;++r){for(int c=0;c<n;++c){d[(size_t)r*n+c]=rand()/(float)RAND_MAX; if(rand()%10==0){ix[k]=c;v[k]=rand()/(float)RAND_MAX-0.5f;k++;}}rp[r+1]=k;}
 for(int i=0;i<n;++i)x[i]=rand()/(float)RAND_MAX-0.5f;
 interleave();scalar8();memcpy(ref,y,4*n);interleaved();
 double err=0;for(int i=0;i<n;++i)err=fmax(err,fabs(y[i]-ref[i]));printf("interleaved against scalar8: max difference %.1g\n",err);
 enum{F=7};const char*names[F]={"gather4","scalar8","manual8 (csr_gather_u16)","manual64","scalar4x","interleaved (interleaved_u16)","dense"};double best[F];
 for(int f=0;f<F;++f)best[f]=1e9;
 for(int rep=0;rep<200;++rep)for(int f=0;f<F;++f){double t=now();for(int i=0;i<5;++i){switch(f){case 0:gather4();break;case 1:scalar8();break;case 2:manual8();break;case 3:manual64();break;case 4:scalar4x();break;case 5:interleaved();break;default:dense(d);}}double el=(now()-t)/5;if(el<best[f])best[f]=el;}
 for(int f=0;f<F;++f)printf("%-30s %6.1f us  %.2f nnz/ns\n",names[f],best[f]*1e6,k/(best[f]*1e9));
}
