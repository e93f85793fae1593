"""gateway: the REST face of the platform. It only translates: REST in, gRPC to the services out."""
