// A pipelined hiredis connection (see redis_connection.hpp).
#include "redis_connection.hpp"

#include <fmt/format.h>
#include <hiredis.h>

#include <cstdlib>

#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace redis_detail {

namespace {

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<decltype(tv.tv_sec)>(ms.count() / 1000);
  tv.tv_usec = static_cast<decltype(tv.tv_usec)>((ms.count() % 1000) * 1000);
  return tv;
}

Reply copy_reply(const redisReply& r) {
  Reply out;
  switch (r.type) {
    case REDIS_REPLY_INTEGER:
      out.type = Reply::Type::Integer;
      out.integer = r.integer;
      break;
    case REDIS_REPLY_STRING:
      out.type = Reply::Type::Text;
      out.text.assign(r.str, r.len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = Reply::Type::Status;
      out.text.assign(r.str, r.len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = Reply::Type::Error;
      out.text.assign(r.str, r.len);
      break;
    case REDIS_REPLY_ARRAY:
      out.type = Reply::Type::Array;
      for (std::size_t i = 0; i < r.elements; ++i)
        out.elements.push_back(copy_reply(*r.element[i]));
      break;
    default:
      break;
  }
  return out;
}

int parse_port(const std::string& text, const std::string& url) {
  char* end = nullptr;
  const long port = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || port < 1 || port > 65535) {
    throw Error(
        fmt::format("redis URL \"{}\": port \"{}\" is not a number in 1..65535", url, text));
  }
  return static_cast<int>(port);
}

}  // namespace

RedisAddress parse_redis_url(const std::string& url) {
  const std::string scheme = "redis://";
  if (url.rfind(scheme, 0) != 0) {
    throw Error(fmt::format("redis URL \"{}\": expected redis://host[:port][/db]", url));
  }
  RedisAddress a;
  std::string rest = url.substr(scheme.size());
  if (const auto at = rest.rfind('@'); at != std::string::npos) {
    const std::string credentials = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const auto colon = credentials.find(':');
    a.user = colon == std::string::npos ? std::string() : credentials.substr(0, colon);
    a.password = colon == std::string::npos ? credentials : credentials.substr(colon + 1);
  }
  if (const auto slash = rest.find('/'); slash != std::string::npos) {
    const std::string db = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    char* end = nullptr;
    const long n = std::strtol(db.c_str(), &end, 10);
    if (!db.empty() && (*end != '\0' || n < 0 || n > 1000000)) {
      throw Error(fmt::format("redis URL \"{}\": database \"{}\" is not a number", url, db));
    }
    a.db = db.empty() ? 0 : static_cast<int>(n);
  }
  if (const auto colon = rest.rfind(':'); colon != std::string::npos) {
    a.port = parse_port(rest.substr(colon + 1), url);
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) throw Error(fmt::format("redis URL \"{}\": no host", url));
  a.host = rest;
  return a;
}

RedisConnection::RedisConnection(const RedisAddress& address, std::chrono::milliseconds timeout) {
  context_ = redisConnectWithTimeout(address.host.c_str(), address.port, to_timeval(timeout));
  if (context_ == nullptr || context_->err) {
    const std::string why = context_ ? context_->errstr : "cannot allocate a connection";
    if (context_) redisFree(context_);
    context_ = nullptr;
    throw Error(fmt::format("redis {}:{}: {}", address.host, address.port, why));
  }
  redisSetTimeout(context_, to_timeval(timeout));
  redisEnableKeepAlive(context_);
  std::vector<Command> hello;
  if (!address.password.empty()) {
    hello.push_back(address.user.empty() ? Command{"AUTH", address.password}
                                         : Command{"AUTH", address.user, address.password});
  }
  if (address.db != 0) hello.push_back({"SELECT", std::to_string(address.db)});
  for (const Reply& r : run(hello)) {
    if (r.error()) throw Error(fmt::format("redis {}:{}: {}", address.host, address.port, r.text));
  }
}

RedisConnection::~RedisConnection() {
  if (context_) redisFree(context_);
}

std::vector<Reply> RedisConnection::run(const std::vector<Command>& commands) {
  if (context_ == nullptr || context_->err) throw Error("redis: the connection is broken");
  std::vector<const char*> argv;
  std::vector<std::size_t> lengths;
  for (const Command& c : commands) {
    argv.clear();
    lengths.clear();
    for (const std::string& a : c) {
      argv.push_back(a.data());
      lengths.push_back(a.size());
    }
    if (redisAppendCommandArgv(context_, static_cast<int>(argv.size()), argv.data(),
                               lengths.data()) != REDIS_OK) {
      throw Error(fmt::format("redis: cannot queue a command: {}", context_->errstr));
    }
  }
  std::vector<Reply> replies;
  replies.reserve(commands.size());
  for (std::size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(context_, &raw) != REDIS_OK || raw == nullptr) {
      throw Error(fmt::format("redis: {}", context_->err ? context_->errstr : "no reply"));
    }
    replies.push_back(copy_reply(*static_cast<redisReply*>(raw)));
    freeReplyObject(raw);
  }
  return replies;
}

std::string RedisConnection::load_script(const std::string& source) {
  const Reply r = run({{"SCRIPT", "LOAD", source}}).front();
  if (r.type != Reply::Type::Text)
    throw Error(fmt::format("redis: SCRIPT LOAD failed: {}", r.text));
  return r.text;
}

}  // namespace redis_detail
TOROUTER_END_NAMESPACE
