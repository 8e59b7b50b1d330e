// Internal: one connection to Redis through hiredis's blocking API, used
// only by the Redis store's own thread. Commands are pipelined: all of a
// batch are written, then all replies read, one round trip for the batch.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "torouter/abi.hpp"

struct redisContext;
struct redisReply;

TOROUTER_BEGIN_NAMESPACE
namespace redis_detail {

/// Where Redis is: redis://[[user]:password@]host[:port][/db].
struct RedisAddress {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string user;
  std::string password;
  int db = 0;
};

/// Parses a redis:// URL; throws `Error` naming what is wrong.
RedisAddress parse_redis_url(const std::string& url);

/// One reply, copied out of hiredis's tree.
struct Reply {
  enum class Type { Nil, Integer, Text, Status, Error, Array } type = Type::Nil;
  long long integer = 0;
  std::string text;  // Text, Status and Error
  std::vector<Reply> elements;

  bool error() const { return type == Type::Error; }
};

/// A command's arguments.
using Command = std::vector<std::string>;

class RedisConnection {
 public:
  /// Connects, authenticates and selects the database; every read and
  /// write waits at most `timeout`. Throws `Error` when it cannot.
  RedisConnection(const RedisAddress& address, std::chrono::milliseconds timeout);
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  /// Sends `commands` and reads their replies, in order. A reply can be a
  /// Redis error (`Reply::error()`); a broken or slow connection throws
  /// `Error`, after which the connection is unusable.
  std::vector<Reply> run(const std::vector<Command>& commands);

  /// Loads a script and returns its SHA1.
  std::string load_script(const std::string& source);

 private:
  redisContext* context_ = nullptr;
};

}  // namespace redis_detail
TOROUTER_END_NAMESPACE
