// tvmcomp RPC board server: a TVM RPC server in C++ that runs ON the board (a real aarch64 board,
// or the emulated one under qemu-aarch64-static), registered at a TVM RPC tracker by key.
//
//   tvmcomp_rpc_board --tracker HOST:PORT --key KEY [--host 127.0.0.1] [--port 9090]
//                     [--port-end 9190] [--custom-addr ADDR] [--once]
//
// It links only the TVM runtime (libtvm_runtime.so + libtvm_ffi.so). The RPC session itself is
// the runtime's `rpc.ServerLoop`; this program does what the Python server (tvm/rpc/server.py)
// does around it: the tracker registration (PUT with a fresh match key, pings with
// GET_PENDING_MATCHKEYS, a new match key when a client took the key but never came), the
// client handshake (RPC_MAGIC, "client:<matchkey> [-timeout=S]" -> RPC_CODE_SUCCESS +
// "server:<key>"), one forked worker per session in its own temporary work folder, which
// registers `tvm.rpc.server.workpath` and `tvm.rpc.server.load_module` (the runtime's own
// `tvm.rpc.server.upload/download/remove` build on workpath), and the session timeout.
#include <arpa/inet.h>
#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tvm/ffi/any.h>
#include <tvm/ffi/c_api.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace ffi = tvm::ffi;

#if defined(__aarch64__)
static const char* kHostArch = "aarch64";
#elif defined(__x86_64__)
static const char* kHostArch = "x86_64";
#else
static const char* kHostArch = "unknown";
#endif

// Protocol constants (tvm/rpc/base.py).
static const int32_t kRPCMagic = 0xFF271;
static const int32_t kTrackerMagic = 0x2F271;
static const int32_t kCodeSuccess = kRPCMagic + 0;
static const int32_t kCodeMismatch = kRPCMagic + 2;
enum TrackerCode { kSuccess = 0, kPut = 3, kUpdateInfo = 5, kGetPendingMatchkeys = 7 };

static volatile sig_atomic_t g_stop = 0;
static void OnSignal(int) { g_stop = 1; }

struct UserError {
  std::string msg;
};
[[noreturn]] static void Fail(const std::string& msg) { throw UserError{msg}; }

static void Log(const std::string& msg) {
  std::fprintf(stderr, "rpc_board: %s\n", msg.c_str());
  std::fflush(stderr);
}

// ---------------------------------------------------------------- socket helpers
static bool SendAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

static bool RecvAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t k = recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// All integers on the wire are little-endian int32 (struct.pack("<i")); both the hosts we
// build for are little-endian.
static bool SendInt(int fd, int32_t v) { return SendAll(fd, &v, 4); }
static bool RecvInt(int fd, int32_t* v) { return RecvAll(fd, v, 4); }

static bool SendStr(int fd, const std::string& s) {
  return SendInt(fd, static_cast<int32_t>(s.size())) && SendAll(fd, s.data(), s.size());
}

static bool RecvStr(int fd, std::string* s, int32_t max_len = 1 << 20) {
  int32_t n = 0;
  if (!RecvInt(fd, &n) || n < 0 || n > max_len) return false;
  s->assign(static_cast<size_t>(n), '\0');
  return RecvAll(fd, s->data(), s->size());
}

static std::string JsonStr(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

static int ConnectTo(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return -1;
  int fd = -1;
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

static int Listen(const std::string& host, int port_begin, int port_end, int* port_out) {
  for (int port = port_begin; port < port_end; ++port) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) {
      Fail("cannot resolve --host " + host);
    }
    int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    // No SO_REUSEADDR: a second server must not share a port with a running one.
    if (fd >= 0 && bind(fd, res->ai_addr, res->ai_addrlen) == 0 && listen(fd, 1) == 0) {
      freeaddrinfo(res);
      *port_out = port;
      return fd;
    }
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
  }
  Fail("no free port in " + std::to_string(port_begin) + "-" + std::to_string(port_end - 1) +
       " on " + host);
}

// ---------------------------------------------------------------- tracker connection
class Tracker {
 public:
  Tracker(std::string host, int port, std::string key, int server_port, std::string custom_addr)
      : host_(std::move(host)), port_(port), key_(std::move(key)), server_port_(server_port),
        custom_addr_(std::move(custom_addr)) {}
  ~Tracker() { Close(); }

  std::string where() const { return host_ + ":" + std::to_string(port_); }
  const std::string& matchkey() const { return matchkey_; }

  // Connect, say hello, report the server's info. False when the tracker cannot be reached.
  bool Connect() {
    Close();
    fd_ = ConnectTo(host_, port_);
    if (fd_ < 0) return false;
    int32_t magic = 0;
    if (!SendInt(fd_, kTrackerMagic) || !RecvInt(fd_, &magic)) return Close(), false;
    if (magic != kTrackerMagic) Fail(where() + " is not a TVM RPC tracker");
    std::string info = "[" + std::to_string(kUpdateInfo) + ", {\"key\": " +
                       JsonStr("server:" + key_) + ", \"addr\": [" + Addr() + ", " +
                       std::to_string(server_port_) + "]}]";
    return Call(info, nullptr) ? true : (Close(), false);
  }

  // Offer this server to clients under a fresh match key.
  bool Put() {
    matchkey_ = NewMatchkey();
    unmatched_s_ = 0;
    std::string msg = "[" + std::to_string(kPut) + ", " + JsonStr(key_) + ", [" +
                      std::to_string(server_port_) + ", " + JsonStr(matchkey_) + "], " + Addr() +
                      "]";
    std::string reply;
    return Call(msg, &reply) && reply == std::to_string(kSuccess);
  }

  // Called every `period_s` without a connection: if a client took the match key from the
  // tracker but did not come within a few seconds, offer a new one (as tvm/rpc/server.py).
  bool Ping(double period_s) {
    std::string reply;
    if (!Call("[" + std::to_string(kGetPendingMatchkeys) + "]", &reply)) return false;
    if (reply.find(JsonStr(matchkey_)) == std::string::npos) {
      unmatched_s_ += period_s;
    } else {
      unmatched_s_ = 0;
    }
    if (unmatched_s_ > 4 + period_s) {
      Log("no incoming connection for the taken match key, registering a new one");
      return Put();
    }
    return true;
  }

  bool connected() const { return fd_ >= 0; }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  std::string Addr() const { return custom_addr_.empty() ? "null" : JsonStr(custom_addr_); }

  std::string NewMatchkey() {
    std::string key;
    do {
      key = key_ + ":" + std::to_string(dist_(rng_));
    } while (used_.count(key));
    used_.insert(key);
    return key;
  }

  bool Call(const std::string& msg, std::string* reply) {
    std::string r;
    if (fd_ < 0 || !SendStr(fd_, msg) || !RecvStr(fd_, &r)) return false;
    if (reply) *reply = r;
    return true;
  }

  std::string host_;
  int port_;
  std::string key_;
  int server_port_;
  std::string custom_addr_;
  int fd_ = -1;
  std::string matchkey_;
  double unmatched_s_ = 0;
  std::set<std::string> used_;
  std::mt19937_64 rng_{std::random_device{}()};
  std::uniform_real_distribution<double> dist_{0.0, 1.0};
};

// ---------------------------------------------------------------- one session
static void RemoveTree(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (d) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string p = path + "/" + name;
      struct stat st;
      if (lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        RemoveTree(p);
      } else {
        unlink(p.c_str());
      }
    }
    closedir(d);
  }
  rmdir(path.c_str());
}

static void SetGlobal(const char* name, ffi::Function f) {
  TVMFFIByteArray n{name, std::strlen(name)};
  if (TVMFFIFunctionSetGlobal(&n, const_cast<void*>(static_cast<const void*>(f.get())),
                              /*allow_override=*/1) != 0) {
    Fail(std::string("cannot register ") + name);
  }
}

// The forked worker: serve one RPC session on `fd` from the work folder `workdir`.
[[noreturn]] static void ServeSession(int fd, const std::string& workdir) {
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  try {
    if (chdir(workdir.c_str()) != 0) Fail("cannot enter " + workdir);
    SetGlobal("tvm.rpc.server.workpath", ffi::Function::FromTyped([workdir](ffi::String path) {
                return ffi::String(workdir + "/" + std::string(path));
              }));
    SetGlobal("tvm.rpc.server.load_module",
              ffi::Function::FromTyped([workdir](ffi::String file_name) {
                std::string path = workdir + "/" + std::string(file_name);
                Log("load_module " + path);
                return ffi::Module::LoadFromFile(ffi::String(path));
              }));
    ffi::Function loop = ffi::Function::GetGlobalRequired("rpc.ServerLoop");
    loop(static_cast<int64_t>(fd));
  } catch (const UserError& e) {
    Log("session: " + e.msg);
    _exit(1);
  } catch (const ffi::Error& e) {
    Log(std::string("session: ") + e.kind() + ": " + e.message());
    _exit(1);
  }
  _exit(0);
}

// Handshake with a client; returns the session timeout in seconds (0: none) or -1 to drop it.
static double Handshake(int fd, const std::string& matchkey, const std::string& key) {
  int32_t magic = 0;
  std::string client;
  if (!RecvInt(fd, &magic) || magic != kRPCMagic || !RecvStr(fd, &client, 4096)) return -1;
  std::vector<std::string> words;
  size_t i = 0;
  while (i < client.size()) {
    size_t j = client.find(' ', i);
    if (j == std::string::npos) j = client.size();
    if (j > i) words.push_back(client.substr(i, j - i));
    i = j + 1;
  }
  if (words.empty() || words[0] != "client:" + matchkey) {
    SendInt(fd, kCodeMismatch);
    Log("mismatched key from a client: " + (words.empty() ? std::string("''") : words[0]));
    return -1;
  }
  if (!SendInt(fd, kCodeSuccess) || !SendStr(fd, "server:" + key)) return -1;
  double timeout = 0;
  for (size_t w = 1; w < words.size(); ++w) {
    if (words[w].rfind("-timeout=", 0) == 0) timeout = std::atof(words[w].c_str() + 9);
  }
  return timeout;
}

// Fork a worker for the session and wait for it (killing it at the timeout or on SIGTERM).
static void RunSession(int fd, double timeout_s) {
  char tmpl[] = "/tmp/tvmcomp_rpc_board.XXXXXX";
  if (!mkdtemp(tmpl)) Fail(std::string("mkdtemp: ") + std::strerror(errno));
  std::string workdir = tmpl;
  std::fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) Fail(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) ServeSession(fd, workdir);
  auto start = std::chrono::steady_clock::now();
  int status = 0;
  bool timed_out = false;
  while (true) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) break;
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (g_stop || (timeout_s > 0 && elapsed > timeout_s)) {
      if (!g_stop) {
        timed_out = true;
        if (auto f = ffi::Function::GetGlobal("rpc.ReturnException")) {
          try {
            (*f)(static_cast<int64_t>(fd),
                 ffi::String("RPCSessionTimeoutError: Your " + std::to_string(timeout_s) +
                             "s session has expired, try to increase the \"session_timeout\" "
                             "value."));
          } catch (const ffi::Error&) {
          }
        }
      }
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (timed_out) Log("session timed out after " + std::to_string(timeout_s) + " s");
  else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
    Log("session worker exited with status " + std::to_string(WEXITSTATUS(status)));
  else if (WIFSIGNALED(status) && !g_stop)
    Log("session worker killed by signal " + std::to_string(WTERMSIG(status)));
  close(fd);
  RemoveTree(workdir);
}

// ---------------------------------------------------------------- main
static void Usage() {
  std::fprintf(stderr,
               "usage: tvmcomp_rpc_board --tracker HOST:PORT --key KEY [--host 127.0.0.1] "
               "[--port 9090] [--port-end P] [--custom-addr ADDR] [--once]\n");
}

int main(int argc, char** argv) {
  std::string tracker, key, host = "127.0.0.1", custom_addr;
  int port = 9090, port_end = 0;
  bool once = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--tracker") tracker = next();
    else if (a == "--key") key = next();
    else if (a == "--host") host = next();
    else if (a == "--port") port = std::atoi(next().c_str());
    else if (a == "--port-end") port_end = std::atoi(next().c_str());
    else if (a == "--custom-addr") custom_addr = next();
    else if (a == "--once") once = true;
    else if (a == "-h" || a == "--help") {
      Usage();
      return 0;
    } else {
      Usage();
      std::fprintf(stderr, "error: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  size_t colon = tracker.rfind(':');
  if (key.empty() || colon == std::string::npos || colon == 0 || port <= 0) {
    Usage();
    return 2;
  }
  if (port_end <= port) port_end = port + 100;
  {
    // Which server a client reached: `tvmcomp tune --rpc-tracker` counts trials per server
    // and records where they were measured. TVMCOMP_BOARD_ORIGIN (set by `tvmcomp rpc server
    // --board` for an emulated board) says how this server runs.
    char hn[256] = {0};
    gethostname(hn, sizeof(hn) - 1);
    std::string id = std::string(hn) + ":" + std::to_string(getpid()) + " (" + kHostArch;
    if (const char* origin = std::getenv("TVMCOMP_BOARD_ORIGIN")) id += std::string(", ") + origin;
    id += ")";
    ffi::Function::SetGlobal("tvm.rpc.server.tvmcomp_server_id",
                             ffi::Function::FromTyped([id]() { return ffi::String(id); }), true);
  }
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  signal(SIGPIPE, SIG_IGN);
  try {
    if (!ffi::Function::GetGlobal("rpc.ServerLoop")) {
      Fail("this libtvm_runtime.so has no RPC support (rpc.ServerLoop not registered)");
    }
    int bound = 0;
    int lfd = Listen(host, port, port_end, &bound);
    Tracker trk(tracker.substr(0, colon), std::atoi(tracker.c_str() + colon + 1), key, bound,
                custom_addr);
    if (!trk.Connect() || !trk.Put()) {
      Fail("cannot reach the RPC tracker at " + trk.where());
    }
    std::printf("RPC server '%s' on %s:%d (C++ board server, %s), registered at %s\n",
                key.c_str(), host.c_str(), bound, kHostArch, trk.where().c_str());
    std::fflush(stdout);
    const double ping_period = 2.0;
    int lost_s = 0;
    while (!g_stop) {
      if (!trk.connected()) {  // the tracker went away: retry for a minute, then give up
        if (trk.Connect() && trk.Put()) {
          Log("re-registered at the tracker " + trk.where());
          lost_s = 0;
        } else if (++lost_s > 60) {
          Fail("lost the RPC tracker at " + trk.where());
        } else {
          std::this_thread::sleep_for(std::chrono::seconds(1));
          continue;
        }
      }
      fd_set fds;
      FD_ZERO(&fds);
      FD_SET(lfd, &fds);
      timeval tv{static_cast<time_t>(ping_period), 0};
      int r = select(lfd + 1, &fds, nullptr, nullptr, &tv);
      if (r < 0) {
        if (errno == EINTR) continue;
        Fail(std::string("select: ") + std::strerror(errno));
      }
      if (r == 0) {
        if (!trk.Ping(ping_period)) trk.Close();
        continue;
      }
      sockaddr_storage peer{};
      socklen_t plen = sizeof(peer);
      int cfd = accept(lfd, reinterpret_cast<sockaddr*>(&peer), &plen);
      if (cfd < 0) continue;
      int one = 1;
      setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      double timeout_s = Handshake(cfd, trk.matchkey(), key);
      if (timeout_s < 0) {
        close(cfd);
        continue;
      }
      RunSession(cfd, timeout_s);
      if (once) break;
      if (!g_stop && !trk.Put()) trk.Close();  // offer the board again
    }
    close(lfd);
  } catch (const UserError& e) {
    std::fprintf(stderr, "error: %s\n", e.msg.c_str());
    return 2;
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "error: %s: %s\n", e.kind().c_str(), e.message().c_str());
    return 2;
  }
  return 0;
}
