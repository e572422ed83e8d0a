"""The SIP layer of the hub's GB/T 28181 server: messages (sipmessage's parser, made strict
for what GB/T 28181 needs), digest authentication, and asyncio transports over UDP and TCP
with client transactions. See ../README.md."""
