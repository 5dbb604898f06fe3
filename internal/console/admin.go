package console

func (c *Console) adminRoutes() {
}
