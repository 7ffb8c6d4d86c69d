// tally.hpp: the Tally client for C++17, header-only, over the C ABI of tally.h.
//
//   tally::Client client;                        // the client file $TALLY_CONFIG names
//   tally::Lease lease = client.checkout("vray"); // throws tally::NoSeat when none is free
//   ...                                          // the lease heartbeats on its own
//   if (lease.lost()) ...                        // the server ended it (or: on_lost)
//                                                // the destructor checks the lease in
//
// Failures throw tally::Error (a std::runtime_error whose what() is the library's
// message), or the subclass for the commonest cases: NoSeat, Unreachable, Untrusted,
// AccessDenied (unauthenticated or forbidden). code() gives the TallyCode, code_str() its
// stable name ("no_seat"). Clients and leases are move-only; a Lease outlives its Client.
// Threads: as tally.h says; the lost callback runs on a thread of the library's own.
// Depends on nothing but the standard library and libtally.
#ifndef TALLY_HPP
#define TALLY_HPP

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tally.h"

namespace tally {

// A failed call: the library's code and its sentence.
class Error : public std::runtime_error {
public:
    Error(TallyCode code, const std::string &message)
        : std::runtime_error(message), code_(code) {}
    TallyCode code() const noexcept { return code_; }
    const char *code_str() const noexcept { return tally_code_str(code_); }

private:
    TallyCode code_;
};

// No seat of the feature was free (within the wait, if one was given).
class NoSeat : public Error {
public:
    using Error::Error;
};

// No server of the list could be reached.
class Unreachable : public Error {
public:
    using Error::Error;
};

// A server's certificate does not verify against the configured CA.
class Untrusted : public Error {
public:
    using Error::Error;
};

// The token was refused (unauthenticated) or its role does not allow the request
// (forbidden).
class AccessDenied : public Error {
public:
    using Error::Error;
};

namespace detail {

// Throws the exception for `code`, with this thread's last error message.
inline void check(TallyCode code) {
    if (code == TALLY_CODE_OK) {
        return;
    }
    std::string message = tally_last_error();
    switch (code) {
    case TALLY_CODE_NO_SEAT:
    case TALLY_CODE_QUEUE_TIMEOUT:
        throw NoSeat(code, message);
    case TALLY_CODE_UNREACHABLE:
        throw Unreachable(code, message);
    case TALLY_CODE_UNTRUSTED:
        throw Untrusted(code, message);
    case TALLY_CODE_UNAUTHENTICATED:
    case TALLY_CODE_FORBIDDEN:
        throw AccessDenied(code, message);
    default:
        throw Error(code, message);
    }
}

// The callback of a lease, at a stable address for the C side's user_data.
using LostHandler = std::function<void(TallyEndReason)>;

extern "C" inline void tally_hpp_on_lost(TallyEndReason reason, void *user_data) {
    try {
        (*static_cast<LostHandler *>(user_data))(reason);
    } catch (...) {
        // Nothing may unwind into the library's thread.
    }
}

} // namespace detail

// The name of an end reason ("released", "revoked", ...).
inline std::string to_string(TallyEndReason reason) {
    return tally_end_reason_str(reason);
}

// The figures of one feature.
using FeatureStatus = TallyFeatureStatus;

// Whether a borrow may be used, and why.
struct Verdict {
    bool valid;
    std::string reason;
};

// Seats checked out; released by release() or, failing that, by the destructor.
class Lease {
public:
    explicit Lease(TallyLease *handle) : handle_(handle) {}
    Lease(Lease &&other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)),
          on_lost_(std::move(other.on_lost_)) {}
    Lease &operator=(Lease &&other) noexcept {
        if (this != &other) {
            reset();
            handle_ = std::exchange(other.handle_, nullptr);
            on_lost_ = std::move(other.on_lost_);
        }
        return *this;
    }
    Lease(const Lease &) = delete;
    Lease &operator=(const Lease &) = delete;
    // Checks the lease in (waiting at most 5 s for the server); never throws.
    ~Lease() { reset(); }

    // The lease id (hex), as `tally leases` shows it.
    std::string id() const { return tally_lease_id(live()); }
    std::string feature() const { return tally_lease_feature(live()); }
    std::uint32_t seats() const { return tally_lease_seats(live()); }

    // Why the server ended the lease, or nothing while it is held.
    std::optional<TallyEndReason> lost() const {
        TallyEndReason reason = tally_lease_lost(live());
        if (reason == TALLY_END_REASON_NONE) {
            return std::nullopt;
        }
        return reason;
    }

    // Calls `handler(reason)` once when the server ends the lease, on the library's own
    // thread; never after release() or the destructor has returned. Replaces a previous
    // handler. Exceptions it throws are swallowed.
    void on_lost(std::function<void(TallyEndReason)> handler) {
        auto next = std::make_unique<detail::LostHandler>(std::move(handler));
        detail::check(tally_lease_on_lost(live(), detail::tally_hpp_on_lost, next.get()));
        on_lost_ = std::move(next);
    }

    // Checks the lease in and waits for the server to confirm; the Lease is empty after,
    // even if this throws.
    void release() {
        TallyLease *handle = std::exchange(handle_, nullptr);
        TallyCode code = tally_lease_release(handle);
        on_lost_.reset();
        detail::check(code);
    }

    // Whether this object still holds a lease (not released, not moved from).
    explicit operator bool() const noexcept { return handle_ != nullptr; }

private:
    TallyLease *live() const {
        if (handle_ == nullptr) {
            throw Error(TALLY_CODE_INVALID_ARGUMENT, "the lease was released or moved from");
        }
        return handle_;
    }
    void reset() noexcept {
        tally_lease_free(std::exchange(handle_, nullptr));
        on_lost_.reset();
    }

    TallyLease *handle_;
    // Owned here so that it outlives every call the library may make to it.
    std::unique_ptr<detail::LostHandler> on_lost_;
};

// A connection to the license servers; it heartbeats its leases and reconnects on its own.
class Client {
public:
    // The client file $TALLY_CONFIG names (else ~/.config/tally/client.toml).
    Client() : Client(nullptr) {}
    // A client file (servers, ca, token_file or token), as `tally --config` reads it.
    explicit Client(const std::string &client_file) : Client(client_file.c_str()) {}
    // Servers ("HOST:PORT", tried in order), the CA's PEM file, and a token.
    Client(const std::vector<std::string> &servers, const std::string &ca_file,
           const std::string &token) {
        std::vector<const char *> list;
        for (const auto &server : servers) {
            list.push_back(server.c_str());
        }
        detail::check(tally_connect_to(list.data(), list.size(), ca_file.c_str(),
                                       token.c_str(), &handle_));
    }
    Client(Client &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Client &operator=(Client &&other) noexcept {
        if (this != &other) {
            tally_client_free(std::exchange(handle_, other.handle_));
            other.handle_ = nullptr;
        }
        return *this;
    }
    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;
    ~Client() { tally_client_free(handle_); }

    // Checks out seats; with a wait, tries again until a seat is free or the wait is over.
    // Throws NoSeat when none is.
    Lease checkout(const std::string &feature, std::uint32_t seats = 1,
                   std::chrono::milliseconds wait = std::chrono::milliseconds(0)) const {
        TallyLease *lease = nullptr;
        auto wait_ms = static_cast<std::uint64_t>(wait.count() < 0 ? 0 : wait.count());
        detail::check(tally_checkout(handle_, feature.c_str(), seats, wait_ms, &lease));
        return Lease(lease);
    }

    FeatureStatus status(const std::string &feature) const {
        FeatureStatus status{};
        detail::check(tally_status(handle_, feature.c_str(), &status));
        return status;
    }

    // Borrows seats for offline use on this machine; returns when the borrow ends
    // (milliseconds since the Unix epoch).
    std::int64_t borrow(const std::string &feature, std::chrono::seconds duration,
                        std::uint32_t seats = 1) const {
        std::int64_t expires_at_ms = 0;
        auto secs = static_cast<std::uint64_t>(duration.count() < 0 ? 0 : duration.count());
        detail::check(tally_borrow(handle_, feature.c_str(), seats, secs, &expires_at_ms));
        return expires_at_ms;
    }

    // Gives this machine's borrows of the feature back; the seats returned.
    std::uint32_t return_borrow(const std::string &feature) const {
        std::uint32_t returned = 0;
        detail::check(tally_return(handle_, feature.c_str(), &returned));
        return returned;
    }

private:
    explicit Client(const char *client_file) {
        detail::check(tally_connect(client_file, &handle_));
    }

    TallyClient *handle_ = nullptr;
};

// Whether this machine holds a valid borrow of `feature`, with no network, against the CA
// of the client file given (empty: the one $TALLY_CONFIG names).
inline Verdict verify_offline(const std::string &feature, const std::string &client_file = "") {
    bool valid = false;
    char *reason = nullptr;
    detail::check(tally_verify_offline(client_file.empty() ? nullptr : client_file.c_str(),
                                       feature.c_str(), &valid, &reason));
    Verdict verdict{valid, reason ? reason : ""};
    tally_string_free(reason);
    return verdict;
}

} // namespace tally

#endif // TALLY_HPP
