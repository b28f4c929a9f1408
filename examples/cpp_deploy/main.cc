// tvmcomp C++ deploy example: load an artifact directory (model.so + manifest.json), run it on
// images from an MNIST IDX file, print predictions, accuracy and latency.
//
//   tvmcomp_deploy ARTIFACT_DIR IMAGES_IDX [LABELS_IDX] [--limit N] [--repeat R]
//                  [--dump-logits FILE] [--mean M] [--std S] [--quiet] [--expect-sha256 HEX]
//
// Built natively for x86-64 and cross-compiled for aarch64 (see Makefile); it links only the TVM
// runtime (libtvm_runtime.so + libtvm_ffi.so), never the compiler.
#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "sha256.h"
#include "tvmcomp_threads.h"

namespace ffi = tvm::ffi;

#if defined(__aarch64__)
static const char* kHostArch = "aarch64";
#elif defined(__x86_64__)
static const char* kHostArch = "x86_64";
#else
static const char* kHostArch = "unknown";
#endif

/*! \brief A user-facing error: printed as one line, exit status 2. */
struct UserError {
  std::string msg;
};

[[noreturn]] static void Fail(const std::string& msg) { throw UserError{msg}; }

// ---------------------------------------------------------------- manifest.json access
static ffi::json::Object AsObject(const ffi::Any& v, const std::string& where) {
  auto o = v.try_cast<ffi::json::Object>();
  if (!o) Fail("manifest: " + where + " is not a JSON object");
  return *o;
}

static ffi::Any Field(const ffi::json::Object& o, const std::string& key,
                      const std::string& where) {
  auto it = o.find(ffi::String(key));
  if (it == o.end()) Fail("manifest: " + where + " lacks '" + key + "'");
  return (*it).second;
}

static std::string Str(const ffi::Any& v, const std::string& where) {
  auto s = v.try_cast<ffi::String>();
  if (!s) Fail("manifest: " + where + " is not a string");
  return std::string(*s);
}

static int64_t Int(const ffi::Any& v, const std::string& where) {
  auto i = v.try_cast<int64_t>();
  if (!i) Fail("manifest: " + where + " is not an integer");
  return *i;
}

struct Manifest {
  std::string library, sha256, profile, family, triple, mcpu, input_dtype;
  std::vector<int64_t> input_shape;  // without the batch dimension
  std::map<int64_t, std::string> entries;  // batch -> VM function name
  int threads = 0;                          // runtime.threads (0: not in the manifest)
  std::string on_load;                      // runtime.on_load: called once before any entry
  int64_t num_classes = 0;
};

static Manifest ReadManifest(const std::string& dir) {
  std::ifstream in(dir + "/manifest.json");
  if (!in) Fail(dir + ": no manifest.json; not a tvmcomp artifact");
  std::stringstream ss;
  ss << in.rdbuf();
  ffi::String err;
  ffi::json::Value root = ffi::json::Parse(ss.str(), &err);
  if (!err.empty()) Fail(dir + "/manifest.json: corrupt JSON (" + std::string(err) + ")");
  auto m = AsObject(root, "root");
  if (Int(Field(m, "schema_version", "root"), "schema_version") != 1) {
    Fail(dir + "/manifest.json: unsupported schema_version (this example reads 1)");
  }
  Manifest out;
  auto lib = AsObject(Field(m, "library", "root"), "library");
  out.library = Str(Field(lib, "file", "library"), "library.file");
  out.sha256 = Str(Field(lib, "sha256", "library"), "library.sha256");
  auto prof = AsObject(Field(m, "profile", "root"), "profile");
  out.profile = Str(Field(prof, "name", "profile"), "profile.name");
  out.family = Str(Field(prof, "family", "profile"), "profile.family");
  auto target = AsObject(Field(m, "target", "root"), "target");
  auto tit = target.find(ffi::String("mtriple"));
  out.triple = tit == target.end() ? "" : Str((*tit).second, "target.mtriple");
  auto cit = target.find(ffi::String("mcpu"));
  out.mcpu = cit == target.end() ? "" : Str((*cit).second, "target.mcpu");
  auto inputs = Field(m, "inputs", "root").cast<ffi::json::Array>();
  if (inputs.size() != 1) Fail("manifest: this example runs single-input models only");
  auto in0 = AsObject(inputs[0], "inputs[0]");
  out.input_dtype = Str(Field(in0, "dtype", "inputs[0]"), "inputs[0].dtype");
  auto shape = Field(in0, "shape", "inputs[0]").cast<ffi::json::Array>();
  for (size_t i = 1; i < shape.size(); ++i) out.input_shape.push_back(Int(shape[i], "shape"));
  auto outputs = Field(m, "outputs", "root").cast<ffi::json::Array>();
  auto oshape = Field(AsObject(outputs[0], "outputs[0]"), "shape", "outputs[0]")
                    .cast<ffi::json::Array>();
  out.num_classes = Int(oshape[oshape.size() - 1], "outputs[0].shape");
  auto entries = AsObject(Field(m, "entry_points", "root"), "entry_points");
  for (const auto& kv : entries) {
    out.entries[std::atoll(Str(kv.first, "entry_points key").c_str())] =
        Str(kv.second, "entry_points value");
  }
  if (out.entries.empty()) Fail("manifest: no entry points");
  auto rit = m.find(ffi::String("runtime"));
  if (rit != m.end()) {
    auto rt = AsObject((*rit).second, "runtime");
    auto tit2 = rt.find(ffi::String("threads"));
    if (tit2 != rt.end()) out.threads = static_cast<int>(Int((*tit2).second, "runtime.threads"));
    auto lit = rt.find(ffi::String("on_load"));
    if (lit != rt.end() && (*lit).second != nullptr) {
      out.on_load = Str((*lit).second, "runtime.on_load");
    }
  }
  return out;
}

/*! \brief Refuse an artifact compiled for another CPU architecture or device, in one line. */
static void CheckTarget(const Manifest& m, const std::string& dir) {
  if (m.family == "cuda") {
    Fail(dir + ": built for profile '" + m.profile + "' (CUDA); this example runs CPU artifacts");
  }
  std::string arch = m.triple.substr(0, m.triple.find('-'));
  if (arch.empty()) arch = "x86_64";  // profiles without mtriple are host x86 builds
  if (arch != kHostArch) {
    Fail(dir + ": built for profile '" + m.profile + "' (" + arch + "); this program runs on " +
         kHostArch + ". Rebuild it for this machine or run it on a " + arch + " board");
  }
  if (m.input_dtype != "float32") Fail("manifest: input dtype " + m.input_dtype + " unsupported");
}

// ---------------------------------------------------------------- MNIST IDX files
static std::vector<uint8_t> ReadIdx(const std::string& path, uint32_t magic,
                                    std::vector<uint32_t>* dims) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path + ": cannot open");
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() >= 2 && data[0] == 0x1f && data[1] == 0x8b) {
    Fail(path + ": gzip-compressed; gunzip it first (gunzip -k " + path + ")");
  }
  auto be32 = [&](size_t off) {
    return (uint32_t(data[off]) << 24) | (uint32_t(data[off + 1]) << 16) |
           (uint32_t(data[off + 2]) << 8) | uint32_t(data[off + 3]);
  };
  if (data.size() < 8 || be32(0) != magic) {
    Fail(path + ": not an IDX file with magic " + std::to_string(magic));
  }
  size_t ndim = magic & 0xff, count = 1;
  if (data.size() < 4 + 4 * ndim) Fail(path + ": truncated IDX header");
  for (size_t i = 0; i < ndim; ++i) {
    dims->push_back(be32(4 + 4 * i));
    count *= dims->back();
  }
  size_t off = 4 + 4 * ndim;
  if (data.size() < off + count) Fail(path + ": truncated IDX file");
  return std::vector<uint8_t>(data.begin() + off, data.begin() + off + count);
}

// ---------------------------------------------------------------- running the VM
struct CpuAlloc {
  void AllocData(DLTensor* t) {
    t->data = std::aligned_alloc(64, (ffi::GetDataSize(*t) + 63) / 64 * 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

static ffi::Tensor NewTensor(const std::vector<int64_t>& shape) {
  return ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::Shape(shape), DLDataType{kDLFloat, 32, 1},
                                  DLDevice{kDLCPU, 0});
}

static ffi::Tensor OutputTensor(const ffi::Any& out) {
  if (auto t = out.try_cast<ffi::Tensor>()) return *t;
  if (auto a = out.try_cast<ffi::Array<ffi::Any>>()) return (*a)[0].cast<ffi::Tensor>();
  Fail("the model returned neither a tensor nor a tuple of tensors");
}

struct Args {
  std::string art, images, labels, dump, expect_sha256;
  int64_t limit = -1, repeat = 50;
  float mean = 0.1307f, std = 0.3081f;  // tvmcomp.data.mnist.MEAN / STD (training normalisation)
  bool quiet = false;
};

static Args ParseArgs(int argc, char** argv) {
  Args a;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Fail(s + " needs a value");
      return argv[++i];
    };
    if (s == "--limit") a.limit = std::atoll(value().c_str());
    else if (s == "--repeat") a.repeat = std::max<int64_t>(1, std::atoll(value().c_str()));
    else if (s == "--dump-logits") a.dump = value();
    else if (s == "--mean") a.mean = std::strtof(value().c_str(), nullptr);
    else if (s == "--std") a.std = std::strtof(value().c_str(), nullptr);
    else if (s == "--quiet") a.quiet = true;
    else if (s == "--expect-sha256") a.expect_sha256 = value();
    else if (s.rfind("--", 0) == 0) Fail("unknown option " + s);
    else pos.push_back(s);
  }
  if (pos.size() < 2 || pos.size() > 3) {
    Fail("usage: tvmcomp_deploy ARTIFACT_DIR IMAGES_IDX [LABELS_IDX] [--limit N] [--repeat R] "
         "[--dump-logits FILE] [--mean M] [--std S] [--quiet] [--expect-sha256 HEX]");
  }
  a.art = pos[0];
  a.images = pos[1];
  if (pos.size() == 3) a.labels = pos[2];
  return a;
}

static int Run(const Args& a) {
  Manifest m = ReadManifest(a.art);
  CheckTarget(m, a.art);
  std::string lib = a.art + "/" + m.library;
  std::string digest = sha256::File(lib);
  if (digest.empty()) Fail(a.art + ": " + m.library + " is missing");
  if (digest != m.sha256) {
    Fail(lib + ": sha256 does not match the manifest: the library was modified or replaced");
  }
  // The manifest sits beside model.so, so its hash catches accidents, not attackers: a
  // deployment pins the hash of the model.so it shipped.
  if (!a.expect_sha256.empty() && digest != a.expect_sha256) {
    Fail(lib + ": sha256 " + digest.substr(0, 12) + "... is not the pinned " +
         a.expect_sha256.substr(0, 12) + "... (--expect-sha256): not the model.so you shipped");
  }

  std::vector<uint32_t> idims;
  std::vector<uint8_t> pixels = ReadIdx(a.images, 2051, &idims);
  int64_t per = 1;
  for (int64_t d : m.input_shape) per *= d;
  if (idims.size() != 3 || int64_t(idims[1]) * idims[2] != per) {
    Fail(a.images + ": images are not the model's input size (" + std::to_string(per) + " px)");
  }
  int64_t n = idims[0];
  if (a.limit > 0) n = std::min(n, a.limit);
  std::vector<uint8_t> labels;
  if (!a.labels.empty()) {
    std::vector<uint32_t> ldims;
    labels = ReadIdx(a.labels, 2049, &ldims);
    if (int64_t(labels.size()) < n) Fail(a.labels + ": fewer labels than images");
  }

  // TVM's thread pool, sized from the manifest before the first kernel (tvmcomp_threads.h).
  int threads = tvmcomp::ConfigureThreads(m.threads);

  // Load model.so, create the Relax VM on the CPU (device type, id, pooled allocator = 2).
  ffi::Module mod = ffi::Module::LoadFromFile(lib);
  auto load_exec = mod->GetFunction("vm_load_executable");
  if (!load_exec) Fail(lib + ": not a Relax VM executable (no vm_load_executable)");
  ffi::Module vm = (*load_exec)().cast<ffi::Module>();
  (*vm->GetFunction("vm_initialization"))(static_cast<int>(kDLCPU), 0, 2);
  std::map<int64_t, ffi::Function> entry;
  for (const auto& kv : m.entries) {
    auto f = vm->GetFunction(kv.second);
    if (!f) Fail(lib + ": entry point " + kv.second + " is missing");
    entry[kv.first] = *f;
  }
  // Layers stored compressed and decoded at load: their function fills TVM's tensor cache
  // with the dense weights once, before any entry point reads them.
  if (!m.on_load.empty()) {
    auto f = vm->GetFunction(m.on_load);
    if (!f) Fail(lib + ": the manifest's on-load function " + m.on_load + " is missing");
    (*f)();
  }

  // Run every image, splitting the set over the compiled batch sizes (tail padded with zeros).
  std::vector<float> logits(n * m.num_classes);
  auto t_all = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n;) {
    int64_t left = n - i, b = entry.begin()->first;
    for (const auto& kv : entry) if (kv.first <= left) b = kv.first;
    std::vector<int64_t> shape = {b};
    shape.insert(shape.end(), m.input_shape.begin(), m.input_shape.end());
    ffi::Tensor x = NewTensor(shape);
    float* xd = static_cast<float*>(x.data_ptr());
    std::memset(xd, 0, sizeof(float) * b * per);
    int64_t take = std::min(b, left);
    for (int64_t j = 0; j < take * per; ++j) {
      xd[j] = (static_cast<float>(pixels[i * per + j]) / 255.0f - a.mean) / a.std;
    }
    ffi::Tensor y = OutputTensor(entry[b](x));
    const float* yd = static_cast<const float*>(y.data_ptr());
    std::memcpy(&logits[i * m.num_classes], yd, sizeof(float) * take * m.num_classes);
    i += take;
  }
  double all_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count();

  std::vector<int> pred(n);
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = &logits[i * m.num_classes];
    pred[i] = static_cast<int>(std::max_element(row, row + m.num_classes) - row);
    if (!labels.empty() && pred[i] == labels[i]) ++correct;
  }

  // Latency: the smallest compiled batch, one image, median over --repeat calls.
  int64_t lb = entry.begin()->first;
  std::vector<int64_t> shape = {lb};
  shape.insert(shape.end(), m.input_shape.begin(), m.input_shape.end());
  ffi::Tensor x = NewTensor(shape);
  std::memset(x.data_ptr(), 0, sizeof(float) * lb * per);
  for (int64_t j = 0; j < per; ++j) {
    static_cast<float*>(x.data_ptr())[j] = (static_cast<float>(pixels[j]) / 255.0f - a.mean) / a.std;
  }
  for (int w = 0; w < 3; ++w) entry[lb](x);
  std::vector<double> us;
  for (int64_t r = 0; r < a.repeat; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    entry[lb](x);
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                     .count());
  }
  std::sort(us.begin(), us.end());

  if (!a.dump.empty()) {
    std::ofstream out(a.dump, std::ios::binary);
    out.write(reinterpret_cast<const char*>(logits.data()), sizeof(float) * logits.size());
    if (!out) Fail(a.dump + ": cannot write");
  }
  std::string batches;
  for (const auto& kv : entry) batches += (batches.empty() ? "" : ",") + std::to_string(kv.first);
  std::printf("artifact: %s (profile %s, %s %s, batches %s, runs on %s)\n", a.art.c_str(),
              m.profile.c_str(), m.triple.c_str(), m.mcpu.c_str(), batches.c_str(), kHostArch);
  std::printf("images: %lld from %s\n", static_cast<long long>(n), a.images.c_str());
  if (threads > 0) {
    std::printf("threads: %d (manifest runtime.threads %d, usable cores %d)\n", threads,
                m.threads, tvmcomp::UsableCores());
  } else {
    std::printf("threads: TVM_NUM_THREADS=%s (set by the user)\n", std::getenv("TVM_NUM_THREADS"));
  }
  if (!a.quiet) {
    std::printf("predictions:");
    for (int64_t i = 0; i < std::min<int64_t>(n, 20); ++i) std::printf(" %d", pred[i]);
    std::printf(n > 20 ? " ...\n" : "\n");
  }
  if (!labels.empty()) {
    std::printf("accuracy: %.4f (%lld/%lld)\n", double(correct) / n,
                static_cast<long long>(correct), static_cast<long long>(n));
  }
  std::printf("latency_us: median %.2f min %.2f (batch %lld, %lld runs)\n", us[us.size() / 2],
              us.front(), static_cast<long long>(lb), static_cast<long long>(a.repeat));
  std::printf("throughput: %.1f images/s over all %lld images\n", n / all_s,
              static_cast<long long>(n));
  return 0;
}

int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const UserError& e) {
    std::fprintf(stderr, "tvmcomp_deploy: error: %s\n", e.msg.c_str());
    return 2;
  } catch (const ffi::Error& e) {
    std::string msg = e.message();
    std::fprintf(stderr, "tvmcomp_deploy: error: TVM %s: %s\n", e.kind().c_str(),
                 msg.substr(0, msg.find('\n')).c_str());
    return 1;
  }
}
