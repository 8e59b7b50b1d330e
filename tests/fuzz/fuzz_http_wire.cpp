// libFuzzer target: the HTTP/1.1 reading torouter-server and the http://
// upstream client share (src/openai/http_wire.hpp). Any input is parsed as
// a request head, as a response head, and as a chunked body. A head that
// parses has used no more than the input and keeps only fields whose names
// are tokens and whose values hold no line break; a chunked body decodes to
// no more bytes than it has, and to the same bytes however it is split.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "http_wire.hpp"

namespace {

namespace http = torouter::openai::http;

void check_head(std::string_view text, bool is_request) {
  http::MessageHead head;
  std::size_t used = 0;
  if (http::parse_head(text, is_request, head, used) != http::ParseStatus::Done) return;
  if (used == 0 || used > text.size()) std::abort();
  if (is_request && (head.method.empty() || head.target.empty())) std::abort();
  if (!is_request && (head.status < 100 || head.status > 999)) std::abort();
  for (const http::Header& h : head.headers) {
    if (h.name.empty() || h.name.find_first_of(" \t\r\n:") != std::string::npos) std::abort();
    if (h.value.find_first_of("\r\n") != std::string::npos) std::abort();
  }
  http::BodyFraming framing;
  if (is_request ? http::request_framing(head, framing) : http::response_framing(head, framing)) {
    if (framing.kind != http::BodyFraming::Kind::Length && framing.length != 0) std::abort();
  }
  (void)head.keeps_alive();
  if (head.path().size() > head.target.size()) std::abort();
}

// The decoded body, or "!" when malformed, "?" when incomplete.
std::string decode(std::string_view body, std::size_t step) {
  http::ChunkedDecoder decoder;
  std::string data;
  std::string pending;
  const auto keep = [&](std::string_view piece) {
    data.append(piece);
    return true;
  };
  for (std::size_t at = 0; at < body.size(); at += step) {
    pending.append(body.substr(at, step));
    std::size_t used = 0;
    const auto result = decoder.feed(pending, used, keep);
    if (used > pending.size()) std::abort();
    pending.erase(0, used);
    if (result == http::ChunkedDecoder::Result::Malformed) return "!";
    if (result == http::ChunkedDecoder::Result::Done) return data;
  }
  return "?";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check_head(text, true);
  check_head(text, false);
  const std::string whole = decode(text, text.size() + 1);
  if (whole.size() > text.size() && whole != "!" && whole != "?") std::abort();
  // Splitting the input differently may only change where a malformed body
  // is noticed, never what a well-formed one decodes to.
  const std::string split = decode(text, 3);
  if (whole != "!" && whole != "?" && split != whole) std::abort();
  return 0;
}
