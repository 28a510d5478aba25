// The per-image work BVLC convert_imageset does between cv::resize and
// mdb_put, written as its C++ does it (util/io.cpp, util/db_lmdb.cpp):
// CVMatToDatum's per-pixel scatter into a std::string, Datum::set_data's
// copy, SerializeToString's copy (with the few header bytes), and
// LMDBTransaction::Put's copies of key and value into its vectors, cleared
// at each commit of 1000. Prints milliseconds per 256x256 BGR image; used by
// bench_convert_imageset.py --caffe-model (Caffe itself is not installed).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
typedef unsigned char uchar;
int main() {
  const int H = 256, W = 256, C = 3, N = 1000;
  std::vector<uchar> img(H * W * C);
  for (auto& v : img) v = rand() & 255;
  std::vector<std::string> keys, values;
  size_t check = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int n = 0; n < N; ++n) {
    int datum_size = C * H * W;
    std::string buffer(datum_size, ' ');
    for (int h = 0; h < H; ++h) {
      const uchar* ptr = img.data() + h * W * C;
      int img_index = 0;
      for (int w = 0; w < W; ++w)
        for (int c = 0; c < C; ++c) {
          int datum_index = (c * H + h) * W + w;
          buffer[datum_index] = static_cast<char>(ptr[img_index++]);
        }
    }
    std::string data = buffer;                 // datum->set_data(buffer)
    std::string out;                           // datum.SerializeToString(&out)
    out.reserve(datum_size + 20);
    out.append("\x08\x03\x10\x80\x02\x18\x80\x02\x22\x80\x80\x0c", 12);
    out.append(data);
    out.append("\x28\x01\x38\x00", 4);
    char key[32];
    snprintf(key, sizeof key, "%08d_img%05d.jpg", n, n);
    keys.push_back(std::string(key));          // txn->Put(key, out)
    values.push_back(out);
    check += values.back()[n % datum_size];
    if ((n + 1) % 1000 == 0) { keys.clear(); values.clear(); }  // Commit()
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  printf("%.3f ms/image (check %zu)\n", s / N * 1e3, check);
}
