// Router::invoke_async: one invoke as a state machine driven by events on
// the caller's event loop (a transport's completion, a timer, a freed slot,
// a cancel), and Router::invoke, the same machine run to its end on a
// RunLoop of the calling thread. One implementation of the retry, failover,
// cooldown, capacity and budget rules serves both.
//
// Every event runs under the invoke's mutex, and carries the `token_` of the
// wait it ends: a timer or a completion whose wait is over (the attempt was
// answered, timed out or cancelled) finds another token and does nothing.
// Timers and completions hold the invoke weakly; while it runs, the invoke
// holds itself (`self_`), so it ends when it finishes, not when its
// pending timers fire.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "retry_rule.hpp"
#include "router_state.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/router.hpp"

TOROUTER_BEGIN_NAMESPACE

using detail::Clock;
using detail::to_ns;
using std::chrono::milliseconds;

namespace {

// The most tokens a call's usage is believed to count each way when its
// expert declares no context window: past the longest windows offered, so
// a larger count comes from a broken or hostile upstream.
constexpr double kMostTokensBelieved = 10'000'000;

milliseconds elapsed_ms(Clock::time_point since) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - since);
}

milliseconds until(Clock::time_point when) {
  return std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(when - Clock::now()));
}

// The pieces an asynchronous stream has sent that the invoke has not yet
// handed on, and when the last one came. Each attempt has its own, so a
// piece of an attempt that is over never reaches the next.
struct StreamBuffer {
  std::mutex mutex;
  // The pieces, one after another in `bytes`, each ending where `ends`
  // says: two buffers that keep their capacity, so a long stream's pieces
  // allocate nothing once it has warmed up.
  std::string bytes;
  std::vector<std::size_t> ends;
  // An event on the loop will hand the pieces on: a piece that comes
  // meanwhile joins them instead of posting another.
  bool delivery_posted = false;
  // The attempt is over (answered, timed out, cancelled): pieces its
  // transport still sends are dropped, not kept where no event empties them.
  bool closed = false;
  std::atomic<std::int64_t> last_arrival_ns{0};
};

// The invoke whose step (see InvokeRun::handle) runs on this thread, if any.
thread_local const void* step_running = nullptr;

// Marks a step as running on this thread while it lives.
struct StepRunning {
  explicit StepRunning(const void* run) : previous(step_running) { step_running = run; }
  ~StepRunning() { step_running = previous; }
  StepRunning(const StepRunning&) = delete;
  StepRunning& operator=(const StepRunning&) = delete;
  const void* previous;
};

// What the walk over the ranked candidates knows of one of them.
struct CandidateProgress {
  bool settled = false;         // called, or skipped for good
  bool over_budget = false;     // skipped: a budget did not cover it
  bool capacity_noted = false;  // found at its concurrency cap at least once
  bool rate_limited = false;    // skipped: its requests or tokens per minute were used up
  bool unavailable = false;     // skipped: the shared state store could not be reached
};

// An admission a store granted after the invoke stopped waiting for it (a
// cancel), or whose event the loop dropped (a stopped RunLoop drops what is
// queued): given back when its event goes without the invoke taking it.
// It holds the store weakly: the store's own thread may run this last.
class AdmissionGiveBack {
 public:
  AdmissionGiveBack(std::weak_ptr<StateStore> store, const AdmissionResult& answer,
                    std::size_t expert)
      : store_(std::move(store)), armed_(answer.outcome == AdmissionOutcome::Admitted) {
    unused_.ticket = answer.ticket;
    unused_.expert = expert;
  }
  ~AdmissionGiveBack() {
    if (!armed_) return;
    if (auto store = store_.lock()) store->settle(unused_);
  }
  AdmissionGiveBack(const AdmissionGiveBack&) = delete;
  AdmissionGiveBack& operator=(const AdmissionGiveBack&) = delete;
  /// The invoke has the answer: it settles an admission itself.
  void taken() { armed_ = false; }

 private:
  std::weak_ptr<StateStore> store_;
  Settlement unused_;
  bool armed_;
};

// The store's answer to an admission, which may come before `admit` returns
// (then the walk goes on in the same step) or later, from another thread.
struct PendingAdmission {
  std::mutex mutex;
  bool returned = false;  // `admit` has returned: a later answer is an event
  bool answered = false;
  AdmissionResult result;
};

}  // namespace

class Router::InvokeRun : public std::enable_shared_from_this<InvokeRun> {
 public:
  InvokeRun(Router& router, std::string prompt, const InvokeOptions* borrowed, InvokeOptions owned,
            std::shared_ptr<EventLoop> loop, std::function<void(InvokeResult)> on_done,
            InvokeResult routed)
      : router_(router),
        options_(router.options_),
        prompt_(std::move(prompt)),
        owned_options_(std::move(owned)),
        invoke_options_(borrowed ? *borrowed : owned_options_),
        loop_(std::move(loop)),
        on_done_(std::move(on_done)),
        result_(std::move(routed)),
        started_(Clock::now()),
        started_at_(std::chrono::system_clock::now()),
        deadline_(started_ + options_.invoke_timeout),
        capacity_deadline_(started_ + options_.capacity_wait) {}

  // Holds itself until finished, listens for a cancel, and posts the start.
  void begin() {
    self_ = shared_from_this();
    if (invoke_options_.cancel) {
      std::weak_ptr<InvokeRun> weak = self_;
      // Under the lock: a cancel from another thread may finish the invoke,
      // and read the id, before on_cancel has returned it.
      std::lock_guard<std::mutex> lock(mutex_);
      cancel_id_ = invoke_options_.cancel->on_cancel([weak] {
        if (auto self = weak.lock()) self->post(kCancelToken, &InvokeRun::on_cancelled);
      });
    }
    post(token_, &InvokeRun::start);
  }

 private:
  using Event = void (InvokeRun::*)();

  // ---------------------------------------------------------------- events

  // Posts `event` to the loop, to run only if no wait has ended since.
  void post(std::uint64_t token, Event event) { post_after(milliseconds(-1), token, event); }

  // The same after `delay` (a negative delay posts at once).
  void post_after(milliseconds delay, std::uint64_t token, Event event) {
    std::weak_ptr<InvokeRun> weak = weak_from_this();
    auto task = [weak, token, event] {
      if (auto self = weak.lock()) self->handle(token, [&] { (self.get()->*event)(); });
    };
    if (delay.count() < 0) {
      loop_->post(std::move(task));
    } else {
      withdraw_timer();  // one of an ended wait, or the one running this
      withdraw_timer_ = loop_->post_after_withdrawable(delay, std::move(task));
    }
  }

  // The loop lets go of the pending timer: its wait has ended (a call
  // that answered before its deadline, say), so it would only do nothing
  // when it fell due, maybe a minute later.
  void withdraw_timer() {
    if (!withdraw_timer_) return;
    WithdrawTask withdraw = std::move(withdraw_timer_);
    withdraw_timer_ = nullptr;
    withdraw();
  }

  // Runs `step` under the lock unless the invoke is over or the wait of
  // `token` has ended; hands the result over when the step finished it.
  template <typename Step>
  void handle(std::uint64_t token, Step&& step) {
    std::shared_ptr<InvokeRun> keep;
    std::uint64_t cancel_id = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (finished_ || (token != token_ && token != kCancelToken)) return;
      StepRunning running(this);
      try {
        step();
      } catch (const std::exception& e) {
        fail_inside(fmt::format("invoke failed inside torouter: {}", e.what()));
      } catch (...) {
        // on_done still runs once, and the slot and the reservation go back.
        fail_inside("invoke failed inside torouter: something not a std::exception was thrown");
      }
      if (!finished_) return;
      keep = std::move(self_);
      cancel_id = cancel_id_;
    }
    if (invoke_options_.cancel) invoke_options_.cancel->forget(cancel_id);
    report_decision();
    on_done_(std::move(result_));
  }

  // The finished call, to the router's decision sink (if any). A sink that
  // throws loses its record, not the caller's answer.
  void report_decision() {
    if (!router_.decision_sink_) return;
    std::string made_id;
    if (invoke_options_.request_id.empty()) {
      made_id = fmt::format("{}-{}", router_.request_id_prefix_, ++router_.next_request_);
    }
    DecisionRecord record;
    record.request_id = made_id.empty() ? std::string_view(invoke_options_.request_id) : made_id;
    record.time = started_at_;
    record.prompt = prompt_;
    record.result = &result_;
    record.propensity = result_.decision.propensity;
    record.pinned_expert = invoke_options_.expert;
    record.latency = elapsed_ms(started_);
    try {
      router_.decision_sink_(record);
    } catch (...) {
    }
  }

  // Starts a new wait: events posted for earlier waits are ignored from now.
  std::uint64_t new_wait() {
    withdraw_timer();
    return ++token_;
  }

  // ------------------------------------------------------ the candidate walk

  void start() {
    const RouteDecision& decision = result_.decision;
    order_.reserve(decision.candidates.size());  // one allocation, not one per doubling
    if (!invoke_options_.expert.empty()) {
      // Pinned: this expert alone, whatever routing thought of it; the
      // walk still checks its state, the budget and its cap.
      for (const auto& c : decision.candidates) {
        if (c.name == invoke_options_.expert) order_.push_back(&c);
      }
      progress_.resize(order_.size());
      start_pass();
      return;
    }
    for (const auto& c : decision.candidates) {
      if (c.eligible()) order_.push_back(&c);
    }
    if (order_.empty()) {
      // A cooldown steers traffic away from a failing expert; it must not
      // refuse a request that only cooling experts could serve. They are
      // tried, best first, as a last resort.
      for (const auto& c : decision.candidates) {
        if (c.exclusion == Exclusion::CoolingDown) order_.push_back(&c);
      }
      result_.last_resort = !order_.empty();
    }
    if (order_.empty()) {
      finish(InvokeError::NoEligibleExpert, describe_exclusions());
      return;
    }
    progress_.resize(order_.size());
    start_pass();
  }

  // A pass over the candidates not settled yet, best first.
  void start_pass() {
    leave_slot_queue();
    cursor_ = 0;
    pass_met_capacity_ = false;
    slot_generation_ = router_.slot_generation();
    walk();
  }

  // Calls the next candidate of the pass that the store admits; at the
  // pass's end, waits for a free slot or gives up.
  void walk() {
    while (cursor_ < order_.size() && experts_called_ < options_.max_experts_tried) {
      const std::size_t k = cursor_++;
      CandidateProgress& progress = progress_[k];
      if (progress.settled) continue;
      const Candidate& c = *order_[k];
      if (const char* why = unusable(c.expert_index)) {
        skip(c, why);
        progress.settled = true;
        continue;
      }
      AdmissionResult answer;
      if (!ask_admission(k, false, answer)) return;  // admission_arrived goes on
      if (take_admission(k, false, answer)) return;
    }
    const auto now = Clock::now();
    if (pass_met_capacity_ && experts_called_ < options_.max_experts_tried &&
        now < capacity_deadline_ && now < deadline_) {
      wait_for_slot();
      return;
    }
    after_walk();
  }

  // Asks the store to admit candidate `k` (ignoring budgets when
  // `downgrade`). True with `answer` set when the store answered before
  // returning; false when its answer will come as an event.
  bool ask_admission(std::size_t k, bool downgrade, AdmissionResult& answer) {
    const Candidate& c = *order_[k];
    Admission admission;
    admission.expert = c.expert_index;
    admission.reserve_usd = c.cost_usd;
    admission.reserve_tokens =
        static_cast<double>(result_.decision.input_tokens) + c.predicted_output_tokens;
    admission.ignore_budgets = downgrade;
    auto pending = std::make_shared<PendingAdmission>();
    const std::uint64_t token = new_wait();
    router_.store_->admit(admission, admission_callback(pending, token, k, downgrade));
    std::lock_guard<std::mutex> lock(pending->mutex);
    pending->returned = true;
    if (!pending->answered) return false;
    answer = std::move(pending->result);
    return true;
  }

  // Where the store answers candidate `k`'s admission: into `pending`
  // while `admit` has not returned, else as an event on the loop (given
  // back if the invoke no longer takes it).
  std::function<void(const AdmissionResult&)> admission_callback(
      std::shared_ptr<PendingAdmission> pending, std::uint64_t token, std::size_t k,
      bool downgrade) {
    return [pending, weak = weak_from_this(), token, k, downgrade, loop = loop_,
            store = std::weak_ptr<StateStore>(router_.store_),
            expert = order_[k]->expert_index](const AdmissionResult& r) {
      {
        std::lock_guard<std::mutex> lock(pending->mutex);
        pending->result = r;
        pending->answered = true;
        if (!pending->returned) return;
      }
      auto give_back = std::make_shared<AdmissionGiveBack>(store, r, expert);
      loop->post([weak, token, k, downgrade, r, give_back] {
        auto self = weak.lock();
        if (!self) return;
        self->handle(token, [&] {
          give_back->taken();
          self->admission_arrived(k, downgrade, r);
        });
      });
    };
  }

  // The store's answer for candidate `k`: true when the candidate is called.
  bool take_admission(std::size_t k, bool downgrade, const AdmissionResult& answer) {
    const Candidate& c = *order_[k];
    CandidateProgress& progress = progress_[k];
    switch (answer.outcome) {
      case AdmissionOutcome::Admitted:
        progress.settled = true;
        ++experts_called_;
        downgrading_ = downgrade;
        ticket_ = answer.ticket;
        router_.state_[c.expert_index].in_flight.fetch_add(1);
        begin_expert(c);
        return true;
      case AdmissionOutcome::OverBudget:
        skip(c, fmt::format("over budget ({} mode): {}",
                            options_.budget_mode == BudgetMode::Refuse ? "refuse" : "downgrade",
                            answer.detail));
        progress.settled = progress.over_budget = true;
        if (budget_detail_.empty()) budget_detail_ = answer.detail;
        break;
      case AdmissionOutcome::AtCapacity:
        if (!progress.capacity_noted) skip(c, answer.detail);
        progress.capacity_noted = pass_met_capacity_ = true;
        break;
      case AdmissionOutcome::RateLimited:
        skip(c, "rate limited: " + answer.detail);
        progress.settled = progress.rate_limited = true;
        break;
      case AdmissionOutcome::Unavailable:
        // The store's words name its address: marked, for a server to cut.
        skip(c, "state store unavailable: ", answer.detail);
        progress.settled = progress.unavailable = true;
        break;
    }
    return false;
  }

  // The store answered after `admit` returned: on with the walk, or, for a
  // soft budget's last resort, give up.
  void admission_arrived(std::size_t k, bool downgrade, const AdmissionResult& answer) {
    if (take_admission(k, downgrade, answer)) return;
    if (downgrade) {
      give_up();
    } else {
      walk();
    }
  }

  // Sleeps until a slot frees or the capacity wait ends, then a new pass. A
  // store shared with other routers is asked again every `capacity_poll`:
  // their releases wake no one here.
  void wait_for_slot() {
    const std::uint64_t token = new_wait();
    std::weak_ptr<InvokeRun> weak = weak_from_this();
    leave_slot_queue();
    slot_wait_id_ = router_.wait_for_slot(slot_generation_, [weak, token] {
      if (auto self = weak.lock()) self->post(token, &InvokeRun::start_pass);
    });
    auto wake = std::min(capacity_deadline_, deadline_);
    const milliseconds poll = router_.store_->capacity_poll();
    if (poll.count() > 0) wake = std::min(wake, Clock::now() + poll);
    post_after(until(wake), token, &InvokeRun::start_pass);
  }

  // Every candidate is settled or waited for long enough: under a soft
  // budget the cheapest still answers; otherwise the invoke fails.
  void after_walk() {
    if (experts_called_ == 0 && options_.budget_mode == BudgetMode::Downgrade) {
      std::optional<std::size_t> cheapest;
      for (std::size_t k = 0; k < order_.size(); ++k) {
        if (progress_[k].over_budget &&
            (!cheapest || order_[k]->cost_usd < order_[*cheapest]->cost_usd)) {
          cheapest = k;
        }
      }
      AdmissionResult answer;
      if (cheapest && !ask_admission(*cheapest, true, answer)) return;
      if (cheapest && take_admission(*cheapest, true, answer)) return;
    }
    give_up();
  }

  void give_up() {
    auto any = [&](bool CandidateProgress::*flag) {
      return std::any_of(progress_.begin(), progress_.end(),
                         [flag](const CandidateProgress& p) { return p.*flag; });
    };
    if (experts_called_ > 0) {
      finish(InvokeError::AllFailed,
             fmt::format("all {} expert(s) tried failed; see the attempts", experts_called_));
    } else if (any(&CandidateProgress::over_budget)) {
      finish(InvokeError::BudgetExhausted,
             fmt::format("a budget covers no eligible expert (first: {})", budget_detail_));
    } else if (any(&CandidateProgress::unavailable)) {
      finish(InvokeError::StateUnavailable,
             "the shared state store cannot be reached and fails closed; see the attempts");
    } else if (any(&CandidateProgress::rate_limited)) {
      finish(InvokeError::RateLimited,
             "every eligible expert's requests or tokens per minute are used up; see the "
             "attempts");
    } else if (any(&CandidateProgress::capacity_noted)) {
      finish(InvokeError::AtCapacity,
             fmt::format("every eligible expert stayed at its concurrency cap for {} ms",
                         options_.capacity_wait.count()));
    } else if (!invoke_options_.expert.empty()) {
      finish(InvokeError::NoEligibleExpert,
             fmt::format("\"{}\" cannot be called now: {}", invoke_options_.expert,
                         result_.attempts.empty() ? "unknown" : result_.attempts.back().detail));
    } else {
      finish(InvokeError::AllFailed, "no eligible expert could be called; see the attempts");
    }
  }

  // Why expert `i` cannot be called now, or nullptr. Routing checked the
  // same, but another thread may have disabled it or made it cool down since.
  const char* unusable(std::size_t i) const {
    if (!router_.state_[i].enabled.load()) return "disabled";
    if (!result_.last_resort && router_.cooling_down(i, to_ns(Clock::now()))) return "cooling down";
    if (!router_.transports_[i].valid()) return "no transport set";
    return nullptr;
  }

  // ------------------------------------------------------ one expert's calls

  // Calls `c`, whose slot and reservation are taken, until it answers or
  // its retries are spent.
  void begin_expert(const Candidate& c) {
    expert_ = &c;
    attempt_number_ = 0;
    calls_sent_ = 0;
    backoff_ = options_.initial_backoff;
    last_ = Response();
    next_attempt();
  }

  // The next call to the current expert, after its backoff or retry-after.
  void next_attempt() {
    ++attempt_number_;
    milliseconds wait{0};
    if (attempt_number_ > 1) {
      const std::optional<milliseconds> pause =
          detail::retry_wait(last_, backoff_, options_.max_retry_after);
      if (!pause) {  // a retry_after past the limit: fail over instead
        end_expert();
        return;
      }
      wait = *pause;
      if (!detail::said_when_to_retry(last_)) {
        backoff_ =
            std::min(options_.max_backoff,
                     milliseconds(static_cast<milliseconds::rep>(
                         static_cast<double>(backoff_.count()) * options_.backoff_multiplier)));
      }
      if (Clock::now() + wait >= deadline_) {
        out_of_time_ = true;
        end_expert();
        return;
      }
    }
    waited_ = wait;
    if (wait.count() > 0) {
      post_after(wait, new_wait(), &InvokeRun::call);
    } else {
      call();
    }
  }

  // One call through the expert's transport.
  void call() {
    const auto remaining = until(deadline_);
    if (remaining.count() <= 0) {
      out_of_time_ = true;
      end_expert();
      return;
    }
    const std::size_t i = expert_->expert_index;
    Request request;
    request.expert = (*router_.experts_)[i].name;
    request.prompt = prompt_;
    request.max_output_tokens = invoke_options_.max_output_tokens;
    request.timeout = std::min(options_.attempt_timeout, remaining);
    request.stream_timeout = options_.stream_timeout;
    request.attempt = attempt_number_;
    request.context = &invoke_options_.context;
    request.cancel = invoke_options_.cancel;
    attempt_start_ = Clock::now();
    ++calls_sent_;
    chunks_delivered_ = false;
    const Transport& transport = router_.transports_[i];
    streamed_text_.clear();
    if (transport.call_async || transport.call_async_streaming) {
      call_async(transport, request);
      return;
    }
    pending_ = call_blocking(transport, request);
    new_wait();
    attempt_done();
  }

  // Starts an asynchronous call: its completion or its deadline, whichever
  // comes first, ends the attempt. The completion may come from any thread,
  // even from inside `call_async`: it only posts to the loop.
  void call_async(const Transport& transport, const Request& request) {
    const std::uint64_t token = new_wait();
    in_attempt_ = true;
    attempt_timeout_ = request.timeout;
    drop_stream();
    stream_deadline_ = Clock::time_point::max();
    if (transport.call_async_streaming) {
      stream_ = std::make_shared<StreamBuffer>();
      stream_->last_arrival_ns.store(to_ns(attempt_start_));
      if (request.stream_timeout.count() > 0) {
        stream_deadline_ = attempt_start_ + request.stream_timeout;
      }
    }
    post_after(std::min(request.timeout, until(stream_deadline_)), token,
               &InvokeRun::attempt_timed_out);
    auto once = std::make_shared<std::atomic<bool>>(false);
    std::weak_ptr<InvokeRun> weak = weak_from_this();
    auto complete = [weak, token, once, loop = loop_](Response response) {
      if (once->exchange(true)) return;  // a second completion is ignored
      loop->post([weak, token, response = std::move(response)]() mutable {
        if (auto self = weak.lock()) {
          self->handle(token, [&] { self->attempt_completed(std::move(response)); });
        }
      });
    };
    try {
      if (stream_) {
        transport.call_async_streaming(request, chunk_receiver(token), complete);
      } else {
        transport.call_async(request, complete);
      }
    } catch (const std::exception& e) {
      complete(Response::failed(FailureKind::TransportError,
                                fmt::format("transport threw: {}", e.what())));
    } catch (...) {
      complete(Response::failed(FailureKind::TransportError, "transport threw a non-exception"));
    }
  }

  // Where an asynchronous stream sends its pieces: they queue in the
  // attempt's buffer, in order, and an event on the loop hands them on, so
  // the caller's `on_chunk` runs on the loop like every other callback.
  ChunkCallback chunk_receiver(std::uint64_t token) {
    std::weak_ptr<InvokeRun> weak = weak_from_this();
    return [weak, token, buffer = stream_, loop = loop_](std::string_view piece) {
      if (piece.empty()) {  // the stream is alive, with no text (see ChunkCallback)
        buffer->last_arrival_ns.store(to_ns(Clock::now()));
        return;
      }
      bool post = false;
      {
        std::lock_guard<std::mutex> lock(buffer->mutex);
        if (buffer->closed) return;
        buffer->bytes.append(piece);
        buffer->ends.push_back(buffer->bytes.size());
        buffer->last_arrival_ns.store(to_ns(Clock::now()));
        post = !buffer->delivery_posted;
        buffer->delivery_posted = true;
      }
      if (!post) return;
      auto hand_on = [weak, token] {
        if (auto self = weak.lock()) self->handle(token, [&] { self->deliver_pieces(); });
      };
      // On a thread of the loop, and not inside a step (a transport may
      // stream from within the call, under the invoke's lock), at once.
      if (step_running == nullptr && loop->runs_here()) return hand_on();
      loop->post(std::move(hand_on));
    };
  }

  // Lets go of the current attempt's stream, closing its buffer.
  void drop_stream() {
    if (!stream_) return;
    {
      std::lock_guard<std::mutex> lock(stream_->mutex);
      stream_->closed = true;
      std::string().swap(stream_->bytes);
      stream_->ends.clear();
    }
    stream_.reset();
  }

  // Hands the current stream's queued pieces to the caller, in order.
  void deliver_pieces() {
    if (!stream_) return;
    {
      std::lock_guard<std::mutex> lock(stream_->mutex);
      delivering_bytes_.swap(stream_->bytes);
      delivering_ends_.swap(stream_->ends);
      stream_->delivery_posted = false;
    }
    std::size_t begin = 0;
    for (const std::size_t end : delivering_ends_) {
      deliver(std::string_view(delivering_bytes_).substr(begin, end - begin));
      begin = end;
    }
    delivering_bytes_.clear();
    delivering_ends_.clear();
  }

  // One piece of a streamed answer: joined for the result, and passed on.
  // An empty one only says the stream is alive.
  void deliver(std::string_view piece) {
    if (piece.empty()) return;
    if (invoke_options_.pieces_are_text) streamed_text_.append(piece);
    if (invoke_options_.on_chunk) {
      chunks_delivered_ = true;
      invoke_options_.on_chunk(piece);
    }
  }

  void attempt_completed(Response response) {
    deliver_pieces();  // pieces whose event has not run yet come first
    in_attempt_ = false;
    drop_stream();
    if (response.ok() && response.text.empty() && invoke_options_.pieces_are_text) {
      response.text = std::move(streamed_text_);
    }
    pending_ = std::move(response);
    new_wait();
    attempt_done();
  }

  // The attempt's timer: the call's time is up, unless a stream sent a
  // piece within the last `attempt_timeout_` (and its cap is not reached).
  void attempt_timed_out() {
    std::string why = fmt::format("no answer within {} ms", attempt_timeout_.count());
    if (stream_) {
      const auto now = Clock::now();
      const auto gap_end =
          Clock::time_point(std::chrono::nanoseconds(stream_->last_arrival_ns.load())) +
          attempt_timeout_;
      if (now < gap_end && now < stream_deadline_) {
        post_after(until(std::min(gap_end, stream_deadline_)), token_,
                   &InvokeRun::attempt_timed_out);
        return;
      }
      deliver_pieces();
      // A stream that sent nothing (or a plain answer asked for through a
      // streaming transport) never started: "no answer", as for a call.
      const bool started = stream_->last_arrival_ns.load() != to_ns(attempt_start_);
      const auto cap = std::chrono::duration_cast<milliseconds>(stream_deadline_ - attempt_start_);
      if (now >= stream_deadline_) {
        why = fmt::format("the stream ran past its stream_timeout of {} ms", cap.count());
      } else if (started) {
        why = fmt::format("no piece of the stream for {} ms", attempt_timeout_.count());
      } else {
        why = fmt::format("no answer within {} ms", attempt_timeout_.count());
      }
      drop_stream();
    }
    in_attempt_ = false;
    pending_ = Response::failed(FailureKind::Timeout, std::move(why));
    new_wait();
    attempt_done();
  }

  // A synchronous or streaming call, on this thread; a throw is a failure.
  Response call_blocking(const Transport& transport, const Request& request) {
    try {
      if (transport.call) return transport.call(request);
      Response response =
          transport.call_streaming(request, [&](std::string_view chunk) { deliver(chunk); });
      if (response.ok() && response.text.empty() && invoke_options_.pieces_are_text) {
        response.text = std::move(streamed_text_);
      }
      return response;
    } catch (const std::exception& e) {
      return Response::failed(FailureKind::TransportError,
                              fmt::format("transport threw: {}", e.what()));
    } catch (...) {
      return Response::failed(FailureKind::TransportError, "transport threw a non-exception");
    }
  }

  // The attempt's response is in `pending_`: answer, retry, or fail over.
  void attempt_done() {
    if (!pending_.ok() && invoke_options_.cancel && invoke_options_.cancel->cancelled()) {
      // The caller cancelled, and the transport, told through the
      // request, failed the call before the cancel's own event ran here:
      // the failure is the cancel's, not the expert's.
      end_cancelled(true);
      return;
    }
    const std::size_t i = expert_->expert_index;
    ExpertState& state = router_.state_[i];
    const ExpertSpec& spec = (*router_.experts_)[i];
    Response response = std::move(pending_);
    Attempt attempt;
    attempt.expert = spec.name;
    attempt.number = attempt_number_;
    attempt.waited = waited_;
    attempt.latency = elapsed_ms(attempt_start_);
    state.calls.fetch_add(1);
    if (response.ok()) {
      answered(std::move(attempt), std::move(response));
      return;
    }
    state.failures.fetch_add(1);
    attempt.outcome = AttemptOutcome::Failed;
    attempt.failure = response.failure;
    attempt.detail = response.error_message;
    attempt.quoted_at = response.upstream_words_at;
    attempt.http_status = response.http_status;
    attempt.retry_after = response.retry_after;
    result_.attempts.push_back(std::move(attempt));
    const bool cooled = !is_request_fault(response.failure) && note_failure(i);
    if (chunks_delivered_) {
      release_begun_answer();
      result_.response = std::move(response);
      finish(InvokeError::StreamBroken,
             fmt::format("\"{}\" failed ({}) after its answer had started streaming", spec.name,
                         to_string(result_.response.failure)));
      return;
    }
    last_ = std::move(response);
    if (cooled || !is_retryable(last_.failure) ||
        attempt_number_ >= options_.max_attempts_per_expert) {
      end_expert();
    } else {
      next_attempt();
    }
  }

  void answered(Attempt attempt, Response response) {
    const std::size_t i = expert_->expert_index;
    const ExpertSpec& spec = (*router_.experts_)[i];
    router_.state_[i].consecutive_failures.store(0);
    double input = response.input_tokens > 0 ? static_cast<double>(response.input_tokens)
                                             : static_cast<double>(result_.decision.input_tokens);
    double output = response.output_tokens > 0
                        ? static_cast<double>(response.output_tokens)
                        : static_cast<double>(estimate_tokens(response.text));
    if (believe_usage(spec, input, output, attempt)) {
      // The counts billed are the ones the result and the decision log show.
      response.input_tokens = static_cast<std::size_t>(input);
      response.output_tokens = static_cast<std::size_t>(output);
    }
    const double cost = router_.cost_model_->cost_usd(spec, input, output);
    // The tries before this answer sent the prompt too.
    const double earlier_prompts =
        static_cast<double>(calls_sent_ - 1) * static_cast<double>(result_.decision.input_tokens);
    release_expert(cost, input + output + earlier_prompts);
    attempt.outcome = AttemptOutcome::Answered;
    attempt.cost_usd = cost;
    result_.attempts.push_back(std::move(attempt));
    // An answer that did not stream reaches a streaming caller as one chunk;
    // an empty one (a message that only calls tools) as none, and none
    // where the caller's pieces are not text (a relay's JSON).
    if (invoke_options_.on_chunk && invoke_options_.pieces_are_text && !chunks_delivered_ &&
        !response.text.empty()) {
      invoke_options_.on_chunk(response.text);
    }
    result_.expert = spec.name;
    result_.cost_usd = cost;
    result_.response = std::move(response);
    finish(InvokeError::None, {});
  }

  // A usage count is believed up to the expert's context window (each
  // answer's output up to the call's max_output_tokens when set), and up to
  // kMostTokensBelieved when it declares none: one broken or hostile count
  // must not spend a whole budget. True when a count was cut down, which
  // the attempt notes (`usage_capped`, and why in its detail).
  bool believe_usage(const ExpertSpec& spec, double& input, double& output,
                     Attempt& attempt) const {
    const double window =
        std::min(static_cast<double>(spec.context_window_tokens), kMostTokensBelieved);
    double each = window;
    if (invoke_options_.max_output_tokens > 0) {
      each = std::min(each, static_cast<double>(invoke_options_.max_output_tokens));
    }
    const double most_output =
        each * static_cast<double>(std::max<std::size_t>(1, invoke_options_.answers));
    if (input <= window && output <= most_output) return false;
    attempt.usage_capped = true;
    attempt.detail = fmt::format(
        "usage not believed: {} input and {} output tokens reported, billed as at most {} and {}",
        input, output, window, most_output);
    input = std::min(input, window);
    output = std::min(output, most_output);
    return true;
  }

  // Counts a failure in a row; true when it sent the expert to cool down.
  bool note_failure(std::size_t i) {
    ExpertState& state = router_.state_[i];
    const int in_a_row = state.consecutive_failures.fetch_add(1) + 1;
    if (in_a_row < options_.failures_before_cooldown) return false;
    state.consecutive_failures.store(0);
    state.cooldown_until_ns.store(to_ns(Clock::now() + options_.cooldown));
    router_.store_->publish_cooldown(i, std::chrono::system_clock::now() + options_.cooldown);
    return true;
  }

  // The current expert is done without an answer: on to the next one.
  void end_expert() {
    release_expert();
    if (downgrading_) {
      give_up();
    } else if (out_of_time_ || Clock::now() >= deadline_) {
      finish(InvokeError::Timeout,
             fmt::format("invoke_timeout of {} ms passed", options_.invoke_timeout.count()));
    } else {
      walk();
    }
  }

  // Settles the reservation at `spent` and frees the slot, if an expert
  // holds them.
  void release_expert(double spent = 0.0, double used_tokens = -1.0) {
    if (expert_ == nullptr) return;
    Settlement settlement;
    settlement.ticket = ticket_;
    settlement.expert = expert_->expert_index;
    settlement.spent_usd = spent;
    // Without an answer, each call sent the prompt. Counted by the calls
    // sent, not the attempts numbered: a retry given up before it went out
    // (a retry-after past the limit, a backoff past the deadline, a
    // cancel) used nothing of the expert's rate.
    settlement.used_tokens =
        used_tokens >= 0
            ? used_tokens
            : static_cast<double>(calls_sent_) * static_cast<double>(result_.decision.input_tokens);
    settlement.extra_requests = std::max(0, calls_sent_ - 1);
    router_.state_[settlement.expert].in_flight.fetch_sub(1);
    expert_ = nullptr;
    router_.store_->settle(settlement);
    router_.slot_released();
  }

  // An answer that broke, or whose caller left, after it had begun to
  // reach the caller: its expert generated, and its provider bills, what
  // was passed on, so a client that leaves before the last event does not
  // get it free. With no usage count for it, the reservation is settled as
  // spent: the predicted cost of the whole answer.
  void release_begun_answer() {
    if (expert_ == nullptr) return;
    const double cost = std::isfinite(expert_->cost_usd) ? expert_->cost_usd : 0.0;
    const double tokens =
        static_cast<double>(calls_sent_) * static_cast<double>(result_.decision.input_tokens) +
        expert_->predicted_output_tokens;
    if (!result_.attempts.empty()) result_.attempts.back().cost_usd = cost;
    result_.cost_usd = cost;
    release_expert(cost, tokens);
  }

  // The caller cancelled: whatever is in flight or waiting stops here.
  void on_cancelled() { end_cancelled(in_attempt_); }

  // Ends the invoke as cancelled, recording the attempt it cut when
  // `during_attempt`. Nothing is charged to the expert's health.
  void end_cancelled(bool during_attempt) {
    let_go_of_call(during_attempt, {});
    finish(InvokeError::Cancelled, "cancelled by the caller");
  }

  // A step threw: the caller's `on_chunk`, a state store or a cost model.
  // The invoke ends as a cancel does, with what was charged: a begun
  // answer's cost, or that of an answer whose hand-over threw.
  void fail_inside(std::string why) {
    let_go_of_call(in_attempt_ && expert_ != nullptr, why);
    double charged = 0.0;
    for (const Attempt& a : result_.attempts) charged += a.cost_usd;
    result_.cost_usd = charged;
    finish(InvokeError::AllFailed, std::move(why));
  }

  // Ends the invoke's hold on its expert for the caller's reason, not the
  // expert's failure: the call in flight (when `during_attempt`) is
  // recorded as cancelled, with `detail`, its stream dropped, and its slot
  // and reservation released (a begun answer is charged).
  void let_go_of_call(bool during_attempt, std::string detail) {
    if (during_attempt) {
      Attempt attempt;
      attempt.expert = (*router_.experts_)[expert_->expert_index].name;
      attempt.number = attempt_number_;
      attempt.outcome = AttemptOutcome::Cancelled;
      attempt.detail = std::move(detail);
      attempt.waited = waited_;
      attempt.latency = elapsed_ms(attempt_start_);
      result_.attempts.push_back(std::move(attempt));
    }
    in_attempt_ = false;
    drop_stream();
    if (chunks_delivered_) {
      release_begun_answer();
    } else {
      release_expert();
    }
  }

  // ---------------------------------------------------------------- results

  // A skipped call's attempt: `why`, then `quoted` (words torouter did
  // not write), marked as a quote when there are any.
  void skip(const Candidate& c, std::string why, std::string_view quoted = {}) {
    Attempt attempt;
    attempt.expert = std::string(c.name);
    attempt.outcome = AttemptOutcome::Skipped;
    attempt.detail = std::move(why);
    if (!quoted.empty()) {
      attempt.quoted_at = attempt.detail.size();
      attempt.detail += quoted;
    }
    result_.attempts.push_back(std::move(attempt));
  }

  void finish(InvokeError error, std::string message) {
    result_.error = error;
    result_.error_message = std::move(message);
    finished_ = true;
    leave_slot_queue();
    withdraw_timer();
  }

  // Takes this invoke's wake-up out of the router's queue, if it is there:
  // woken by a poll, a deadline or a cancel, it waits no more. (Under the
  // invoke's lock; the router's queue lock is never held while taking it.)
  void leave_slot_queue() {
    router_.stop_waiting_for_slot(slot_wait_id_);
    slot_wait_id_ = 0;
  }

  std::string describe_exclusions() const {
    std::string out = "no expert passes the constraints:";
    for (const auto& c : result_.decision.candidates) {
      out += fmt::format(" {} ({});", c.name, to_string(c.exclusion));
    }
    out.pop_back();
    return out;
  }

  Router& router_;
  const RouterOptions& options_;
  const std::string prompt_;
  const InvokeOptions owned_options_;
  // The caller's options when it keeps them alive (the blocking invoke),
  // else `owned_options_`.
  const InvokeOptions& invoke_options_;
  const std::shared_ptr<EventLoop> loop_;
  std::function<void(InvokeResult)> on_done_;
  InvokeResult result_;
  const Clock::time_point started_;
  const std::chrono::system_clock::time_point started_at_;  // for the decision log
  const Clock::time_point deadline_;
  const Clock::time_point capacity_deadline_;

  std::mutex mutex_;
  std::shared_ptr<InvokeRun> self_;
  bool finished_ = false;
  // The wait events must match; a cancel has a token of its own, which
  // never stops matching.
  std::uint64_t token_ = 1;
  static constexpr std::uint64_t kCancelToken = 0;
  // Withdraws the timer of the current wait, if one is pending.
  WithdrawTask withdraw_timer_;
  std::uint64_t cancel_id_ = 0;

  // The walk: the candidates to try in order, and where the pass stands.
  std::vector<const Candidate*> order_;
  std::vector<CandidateProgress> progress_;
  std::size_t cursor_ = 0;
  bool pass_met_capacity_ = false;
  std::uint64_t slot_generation_ = 0;
  // This invoke's place in the router's queue of slot waiters (0: none).
  std::uint64_t slot_wait_id_ = 0;
  std::size_t experts_called_ = 0;
  bool downgrading_ = false;
  // Set when a retry was given up because the invoke's deadline came first.
  bool out_of_time_ = false;

  // Why the first candidate over budget was (for the error).
  std::string budget_detail_;

  // The expert being called (admitted by the store: it holds a slot and a
  // reservation under `ticket_`), or null.
  const Candidate* expert_ = nullptr;
  std::uint64_t ticket_ = 0;
  int attempt_number_ = 0;
  int calls_sent_ = 0;  // to the current expert: attempts that reached its transport
  milliseconds backoff_{0};
  milliseconds waited_{0};
  Response last_;
  Clock::time_point attempt_start_;
  bool in_attempt_ = false;  // an asynchronous call is in flight
  bool chunks_delivered_ = false;
  milliseconds attempt_timeout_{0};
  Response pending_;
  // The pieces of the current attempt's streamed answer so far.
  std::string streamed_text_;
  // The current attempt's stream, when its transport streams asynchronously,
  // and when the whole stream must be over (`RouterOptions::stream_timeout`).
  std::shared_ptr<StreamBuffer> stream_;
  Clock::time_point stream_deadline_ = Clock::time_point::max();
  // The pieces being handed on, swapped with the stream's (see StreamBuffer).
  std::string delivering_bytes_;
  std::vector<std::size_t> delivering_ends_;
};

void Router::slot_released() {
  std::map<std::uint64_t, std::function<void()>> waiters;
  {
    std::lock_guard<std::mutex> lock(slot_waiters_mutex_);
    ++slot_generation_;
    waiters.swap(slot_waiters_);
  }
  for (auto& [id, wake] : waiters) wake();
}

std::uint64_t Router::slot_generation() const {
  std::lock_guard<std::mutex> lock(slot_waiters_mutex_);
  return slot_generation_;
}

std::uint64_t Router::wait_for_slot(std::uint64_t generation, std::function<void()> wake) {
  {
    std::lock_guard<std::mutex> lock(slot_waiters_mutex_);
    if (generation == slot_generation_) {
      const std::uint64_t id = ++next_slot_wait_;
      slot_waiters_.emplace(id, std::move(wake));
      return id;
    }
  }
  wake();  // a slot was released since the caller looked: look again now
  return 0;
}

std::size_t Router::invokes_waiting_for_slot() const {
  std::lock_guard<std::mutex> lock(slot_waiters_mutex_);
  return slot_waiters_.size();
}

void Router::stop_waiting_for_slot(std::uint64_t id) {
  if (id == 0) return;
  std::lock_guard<std::mutex> lock(slot_waiters_mutex_);
  slot_waiters_.erase(id);
}

void Router::invoke_async(std::string_view prompt, InvokeOptions options,
                          std::shared_ptr<EventLoop> loop,
                          std::function<void(InvokeResult)> on_done) {
  start_invoke(prompt, nullptr, std::move(options), std::move(loop), std::move(on_done));
}

void Router::copy_decision(const RouteDecision& from, RouteDecision& to) const {
  if (from.registry_ != experts_ || from.candidates.size() != experts_->size()) {
    throw Error("Router::invoke: InvokeOptions.routed is not a decision of this router",
                ErrorCode::Misuse);
  }
  to.candidates = from.candidates;
  to.reason = from.reason;
  to.policy = from.policy;
  to.policy_name = from.policy_name;
  to.model_version = from.model_version;
  to.input_tokens = from.input_tokens;
  to.propensity = from.propensity;
  to.expected_quality = from.expected_quality;
  to.registry_ = from.registry_;
  to.policy_ = from.policy_;
  to.scorer_ = from.scorer_;
}

void Router::start_invoke(std::string_view prompt, const InvokeOptions* borrowed,
                          InvokeOptions owned, std::shared_ptr<EventLoop> loop,
                          std::function<void(InvokeResult)> on_done) {
  if (!loop) throw Error("Router::invoke_async: the event loop is null", ErrorCode::Misuse);
  if (!on_done) throw Error("Router::invoke_async: on_done is empty", ErrorCode::Misuse);
  const InvokeOptions& options = borrowed ? *borrowed : owned;
  if (!options.expert.empty()) expert_index(options.expert);  // throws for an unknown name
  InvokeResult result;
  if (options.routed) {
    copy_decision(*options.routed, result.decision);
  } else if (options.max_output_tokens > 0 && options.route.policy.max_output_tokens == 0) {
    // The context window must hold what the call will reserve.
    RouteOptions route = options.route;
    route.policy.max_output_tokens = options.max_output_tokens;
    route_pooled(prompt, route, result.decision);
  } else {
    route_pooled(prompt, options.route, result.decision);
  }
  // Not make_shared: on a caller's loop that keeps withdrawn timers
  // (EventLoop's default withdrawal), an invoke's timers (its attempt
  // deadline, 30 s by default) hold weak pointers to it until they fall
  // due, and with make_shared those would keep the whole object's memory,
  // its result and options included, for as long.
  std::shared_ptr<InvokeRun>(new InvokeRun(*this, std::string(prompt), borrowed, std::move(owned),
                                           std::move(loop), std::move(on_done), std::move(result)))
      ->begin();
}

InvokeResult Router::invoke(std::string_view prompt, const InvokeOptions& options) {
  auto loop = std::make_shared<RunLoop>();
  InvokeResult out;
  // The caller's options outlive this call, so the invoke borrows them:
  // transports see the caller's own context object.
  start_invoke(prompt, &options, InvokeOptions(), loop, [&out, &loop](InvokeResult result) {
    out = std::move(result);
    loop->stop();
  });
  loop->run();
  return out;
}

TOROUTER_END_NAMESPACE
