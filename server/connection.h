// One HTTP/1.1 connection over Beast: requests read under header and body deadlines and limits,
// routed (router.h) and answered whole or as Server-Sent Events (each event one chunk of Beast's
// chunk API); a disconnect watch while an answer is being made; the request log line and
// metrics; a lingering close after errors answered before the body was read.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <string>

#include "server/server_impl.h"

namespace cepe::server {

/// Serves one accepted connection until it closes; `client` is the peer's address, already
/// counted by Server::Impl::admit_client().
void serve_connection(boost::asio::ip::tcp::socket socket, Server::Impl& srv, std::string client);

}  // namespace cepe::server
